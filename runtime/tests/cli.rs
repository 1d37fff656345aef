//! The `grafos` command as a user types it.

use std::process::Command;

use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::edge::{EdgeConfig, EdgeLog};
use grafos_worker::segment::{Segment, SegmentName, list_segments};

const GRAFOS: &str = env!("CARGO_BIN_EXE_grafos");

#[test]
fn segments_lists_edge_logs_and_queues_with_their_state() {
    let instance = format!("cli{}", std::process::id());
    let edge = SegmentName::new(&instance, "orders").unwrap();
    let queue = SegmentName::new(&instance, "jobs").unwrap();
    let _log = EdgeLog::create(&edge, &EdgeConfig::default()).unwrap();
    let jobs = FabricQueue::create(&queue, &QueueConfig::new(8, 32)).unwrap();
    jobs.try_push(b"job").unwrap();
    let out = Command::new(GRAFOS)
        .args(["segments", "--instance", &instance])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let cleanup = || {
        let _ = Segment::unlink(&edge);
        let _ = Segment::unlink(&queue);
    };
    let row = |object: &str| {
        text.lines()
            .find(|l| l.starts_with(object))
            .unwrap_or_default()
            .to_owned()
    };
    let (orders, job_row) = (row("orders"), row("jobs"));
    cleanup();
    assert!(out.status.success(), "{text}");
    assert!(
        orders.contains("EdgeLog") && orders.contains("tail=0"),
        "{text}"
    );
    assert!(
        job_row.contains("Queue")
            && job_row.contains("slots=8")
            && job_row.contains("depth=1")
            && job_row.contains("participants=1"),
        "{text}"
    );
    drop(jobs);
    assert!(list_segments(&instance).unwrap().is_empty());
}

#[test]
fn a_bad_instance_name_is_refused_with_the_rule() {
    let out = Command::new(GRAFOS)
        .args(["segments", "--instance", "no/slashes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid name"), "{err}");
}

//! A worker for `grafos run` topologies in the tests: this test binary
//! started with `GRAFOS_TEST_PEER=worker` and one of
//!
//! * `serve EVENTS`: appends `start ID PID` to the file EVENTS, runs until
//!   SIGTERM (a `Drain`), appends `drained ID`, exits 0;
//! * `produce EVENTS QUEUE HOLD_MS`: leases 4 KiB (renewed by a
//!   `RenewalManager`, logged as `lease ID LEASE`), then pushes sequence
//!   numbers into the instance's queue QUEUE every 2 ms, holding each claim
//!   HOLD_MS first (logged as `holding ID SEQ`), until SIGTERM;
//! * `consume EVENTS QUEUE`: pops from QUEUE, logging `got ID COUNT` every
//!   10 records, until SIGTERM;
//! * `exit CODE MS`: exits with CODE after MS milliseconds.

use std::io::Write;
use std::time::Duration;

use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::drain::{Drain, worker_id};
use grafos_worker::host::unix_time_secs;
use grafos_worker::layout::queue::QueueError;
use grafos_worker::leasekit::{RenewalManager, RenewalPolicy};
use grafos_worker::mem::MemBuilder;
use grafos_worker::segment::SegmentName;

fn append(path: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("events file opens");
    // One write per line: O_APPEND keeps lines of several processes whole.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("events file takes a line");
}

pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let id = worker_id().expect("GRAFOS_WORKER_ID is set");
    match args.first().map(String::as_str) {
        Some("serve") => {
            let drain = Drain::install().expect("drain hook");
            append(&args[1], &format!("start {id} {}", std::process::id()));
            while !drain.requested() {
                std::thread::sleep(Duration::from_millis(5));
            }
            append(&args[1], &format!("drained {id}"));
        }
        Some("produce") => produce(&args[1], &args[2], args[3].parse().expect("hold ms")),
        Some("consume") => consume(&args[1], &args[2]),
        Some("exit") => {
            std::thread::sleep(Duration::from_millis(args[2].parse().expect("ms")));
            std::process::exit(args[1].parse().expect("code"));
        }
        other => panic!("unknown worker role {other:?}"),
    }
}

fn open_queue(object: &str) -> FabricQueue {
    let instance = std::env::var("GRAFOS_INSTANCE").expect("GRAFOS_INSTANCE is set");
    FabricQueue::open(&SegmentName::new(&instance, object).expect("queue name"))
        .expect("queue opens")
}

fn produce(events: &str, queue: &str, hold_ms: u64) {
    let id = worker_id().expect("GRAFOS_WORKER_ID is set");
    let instance = std::env::var("GRAFOS_INSTANCE").expect("GRAFOS_INSTANCE is set");
    let drain = Drain::install().expect("drain hook");
    let lease = MemBuilder::new()
        .instance(&instance)
        .min_bytes(4096)
        .lease_secs(10)
        .acquire()
        .expect("lease");
    append(events, &format!("lease {id} {}", lease.lease_id()));
    let mut renewals = RenewalManager::for_instance(&instance);
    renewals.register(
        lease.lease_id(),
        lease.deadline_ms() / 1000,
        RenewalPolicy::new(10).renew_before(9),
    );
    let queue = open_queue(queue);
    let mut seq = 0u64;
    while !drain.requested() {
        // Renewals fail while no supervisor runs; the next tick tries again.
        let _ = renewals.tick(unix_time_secs());
        match queue.reserve(8, Some(Duration::from_millis(100))) {
            Ok(mut loan) => {
                loan.as_mut_slice().copy_from_slice(&seq.to_le_bytes());
                if hold_ms > 0 {
                    append(events, &format!("holding {id} {seq}"));
                    std::thread::sleep(Duration::from_millis(hold_ms));
                }
                loan.commit().expect("publish");
                seq += 1;
            }
            Err(QueueError::TimedOut) => {}
            Err(e) => panic!("push: {e}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    append(events, &format!("drained {id}"));
}

fn consume(events: &str, queue: &str) {
    let id = worker_id().expect("GRAFOS_WORKER_ID is set");
    let drain = Drain::install().expect("drain hook");
    let queue = open_queue(queue);
    let mut count = 0u64;
    while !drain.requested() {
        match queue.pop(Some(Duration::from_millis(100))) {
            Ok(_) => {
                count += 1;
                if count.is_multiple_of(10) {
                    append(events, &format!("got {id} {count}"));
                }
            }
            Err(QueueError::TimedOut) => {}
            Err(e) => panic!("pop: {e}"),
        }
    }
    append(events, &format!("drained {id}"));
}

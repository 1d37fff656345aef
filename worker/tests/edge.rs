//! Edge logs on real mapped segments, within one process.

mod common;

use std::time::Duration;

use common::TestInstance;
use grafos_worker::FabricError;
use grafos_worker::edge::{EdgeConfig, EdgeLog};
use grafos_worker::futex::LinuxFutex;
use grafos_worker::layout::edge::EdgeError;
use grafos_worker::layout::header::{Expect, TypeDescriptor};
use grafos_worker::layout::wait::{Waiter, wait_any};
use grafos_worker::segment::Segment;

fn small(capacity: u64) -> EdgeConfig {
    EdgeConfig {
        capacity,
        ..EdgeConfig::default()
    }
}

#[test]
fn threads_stream_checksummed_records_in_order() {
    let instance = TestInstance::new("stream");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(4096)).unwrap();
    let mut producer = log.producer().unwrap();
    let mut consumer = EdgeLog::open(&name).unwrap().consumer().unwrap();
    const N: u64 = 100_000;
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            let len = (i % 200) as usize;
            let mut record = vec![(i % 251) as u8; len + 8];
            record[..8].copy_from_slice(&i.to_le_bytes());
            producer
                .push(&record, Some(Duration::from_secs(10)))
                .unwrap();
        }
    });
    for i in 0..N {
        let record = consumer.read(Some(Duration::from_secs(10))).unwrap();
        let bytes = record.bytes();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), i);
        assert_eq!(bytes.len(), (i % 200) as usize + 8);
        assert!(bytes[8..].iter().all(|&b| b == (i % 251) as u8));
        if i % 7 == 0 {
            consumer.commit_read();
        }
    }
    consumer.commit_read();
    writer.join().unwrap();
    Segment::unlink(&name).unwrap();
}

#[test]
fn reopened_consumer_resumes_at_commit() {
    let instance = TestInstance::new("reopen");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    let mut producer = log.producer().unwrap();
    for i in 0..5u8 {
        producer.try_push(&[i; 10]).unwrap();
    }
    {
        let mut consumer = log.consumer().unwrap();
        let first = consumer.try_read().unwrap().unwrap().next_position();
        consumer.try_read().unwrap().unwrap();
        consumer.commit(first).unwrap();
    }
    let mut consumer = EdgeLog::open(&name).unwrap().consumer().unwrap();
    assert_eq!(consumer.try_read().unwrap().unwrap().bytes(), &[1; 10]);
    Segment::unlink(&name).unwrap();
}

#[test]
fn roles_are_exclusive_within_a_process() {
    let instance = TestInstance::new("roles");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    let producer = log.producer().unwrap();
    assert!(matches!(
        log.producer(),
        Err(FabricError::RoleTaken {
            role: "producer",
            ..
        })
    ));
    drop(producer);
    let _again = log.producer().unwrap();
    let _consumer = log.consumer().unwrap();
    assert!(matches!(
        EdgeLog::open(&name).unwrap().consumer(),
        Err(FabricError::RoleTaken { .. })
    ));
    Segment::unlink(&name).unwrap();
}

#[test]
fn loans_write_in_place_and_abandoned_loans_vanish() {
    let instance = TestInstance::new("loan");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    let mut producer = log.producer().unwrap();
    let mut consumer = log.consumer().unwrap();
    {
        let mut loan = producer.try_reserve(5).unwrap();
        loan.as_mut_slice().copy_from_slice(b"hello");
        // Dropped here without commit.
    }
    assert!(
        consumer.try_read().unwrap().is_none(),
        "an abandoned loan became visible"
    );
    let mut loan = producer.try_reserve(5).unwrap();
    loan.as_mut_slice().copy_from_slice(b"world");
    loan.commit().unwrap();
    assert_eq!(consumer.try_read().unwrap().unwrap().bytes(), b"world");
    Segment::unlink(&name).unwrap();
}

#[test]
fn oversized_records_get_a_clear_error() {
    let instance = TestInstance::new("big");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    assert_eq!(log.max_record(), 504);
    let mut producer = log.producer().unwrap();
    let err = producer.try_push(&[0; 505]).unwrap_err();
    assert_eq!(err, EdgeError::TooLarge { len: 505, max: 504 });
    assert!(err.to_string().contains("exceeds the log's maximum of 504"));
    assert!(matches!(
        EdgeLog::create(&instance.segment("bad"), &small(1000)),
        Err(FabricError::InvalidArgument(_))
    ));
    Segment::unlink(&name).unwrap();
}

#[test]
fn typed_records_round_trip_and_payload_types_are_checked() {
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Tick {
        id: u64,
        price: f64,
    }
    let instance = TestInstance::new("typed");
    let name = instance.segment("edge");
    let config = EdgeConfig {
        payload: TypeDescriptor::pod::<Tick>(),
        ..small(1024)
    };
    let log = EdgeLog::create(&name, &config).unwrap();
    let wrong = Expect {
        payload: Some(TypeDescriptor::pod::<u64>()),
        ..Expect::default()
    };
    assert!(matches!(
        EdgeLog::open_with(&name, &wrong),
        Err(FabricError::Layout { .. })
    ));
    let right = Expect {
        payload: Some(TypeDescriptor::pod::<Tick>()),
        ..Expect::default()
    };
    let mut producer = EdgeLog::open_with(&name, &right)
        .unwrap()
        .producer()
        .unwrap();
    producer.try_push_pod(&Tick { id: 1, price: 2.5 }).unwrap();
    producer.try_push(b"short").unwrap();
    let mut consumer = log.consumer().unwrap();
    assert_eq!(
        consumer.try_read_pod::<Tick>().unwrap(),
        Some(Tick { id: 1, price: 2.5 })
    );
    assert!(matches!(
        consumer.try_read_pod::<Tick>(),
        Err(FabricError::WrongSize {
            expected: 16,
            found: 5
        })
    ));
    Segment::unlink(&name).unwrap();
}

#[test]
fn serde_records_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u32,
        item: String,
    }
    let instance = TestInstance::new("serde");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    let order = Order {
        id: 7,
        item: "seven".into(),
    };
    log.producer().unwrap().push_serde(&order, None).unwrap();
    let got: Order = log
        .consumer()
        .unwrap()
        .read_serde(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(got, order);
    Segment::unlink(&name).unwrap();
}

#[test]
fn blocking_calls_time_out_and_seal_ends_them() {
    let instance = TestInstance::new("block");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(64)).unwrap();
    let mut consumer = log.consumer().unwrap();
    assert_eq!(
        consumer.read(Some(Duration::from_millis(20))).unwrap_err(),
        EdgeError::TimedOut
    );
    let mut producer = log.producer().unwrap();
    while producer.try_push(&[1; 8]).is_ok() {}
    assert_eq!(
        producer
            .push(&[1; 8], Some(Duration::from_millis(20)))
            .unwrap_err(),
        EdgeError::TimedOut
    );
    let sealer = log.clone();
    let waiter = std::thread::spawn(move || producer.push(&[1; 8], Some(Duration::from_secs(20))));
    // Wait until the producer sleeps, then seal: the seal must wake it.
    let start = std::time::Instant::now();
    while !sealer.positions().sealed {
        if start.elapsed() > Duration::from_millis(50) {
            sealer.seal().unwrap();
        }
        std::thread::yield_now();
    }
    assert_eq!(waiter.join().unwrap().unwrap_err(), EdgeError::Sealed);
    let mut drained = 0;
    while let Ok(Some(_)) = consumer.try_read() {
        drained += 1;
    }
    assert_eq!(
        drained, 3,
        "the records published before the seal are readable"
    );
    assert_eq!(consumer.try_read().unwrap_err(), EdgeError::Sealed);
    Segment::unlink(&name).unwrap();
}

#[test]
fn wait_any_wakes_on_either_log() {
    let instance = TestInstance::new("waitany");
    let (a, b) = (instance.segment("a"), instance.segment("b"));
    let log_a = EdgeLog::create(&a, &small(64)).unwrap();
    let log_b = EdgeLog::create(&b, &small(64)).unwrap();
    let consumer_a = log_a.consumer().unwrap();
    let consumer_b = log_b.consumer().unwrap();
    let writer = {
        let log_b = log_b.clone();
        std::thread::spawn(move || log_b.producer().unwrap().push(b"b", None).unwrap())
    };
    let (point_a, point_b) = (consumer_a.wait_point(), consumer_b.wait_point());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let woke = wait_any(
        &LinuxFutex,
        &[point_a, point_b],
        Waiter::slot(5),
        Some(deadline),
        || consumer_a.is_ready() || consumer_b.is_ready(),
    );
    assert!(woke, "not woken by the record on the second log");
    assert!(consumer_b.is_ready() && !consumer_a.is_ready());
    writer.join().unwrap();
    Segment::unlink(&a).unwrap();
    Segment::unlink(&b).unwrap();
}

#[test]
fn a_dead_producers_claim_is_tombed_by_its_successor() {
    let instance = TestInstance::new("hole");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    let mut consumer = log.consumer().unwrap();
    {
        let mut producer = log.producer().unwrap();
        producer.try_push(b"before").unwrap();
        // Claimed, half written, never published nor abandoned: what a
        // SIGKILL between claim and publish leaves behind.
        let mut loan = producer.try_reserve(9).unwrap();
        loan.as_mut_slice()[..4].copy_from_slice(b"half");
        std::mem::forget(loan);
    }
    assert_eq!(consumer.try_read().unwrap().unwrap().bytes(), b"before");
    assert!(
        consumer.try_read().unwrap().is_none(),
        "the consumer waits at the hole"
    );
    let mut successor = log.producer().unwrap();
    successor.try_push(b"after").unwrap();
    assert_eq!(
        consumer.try_read().unwrap().unwrap().bytes(),
        b"after",
        "the hole is skipped"
    );
    Segment::unlink(&name).unwrap();
}

#[test]
fn a_seal_during_a_loan_fails_its_commit_and_keeps_what_was_published() {
    let instance = TestInstance::new("sealloan");
    let name = instance.segment("edge");
    let log = EdgeLog::create(&name, &small(1024)).unwrap();
    let mut producer = log.producer().unwrap();
    producer.try_push(b"kept").unwrap();
    let mut loan = producer.try_reserve(4).unwrap();
    loan.as_mut_slice().copy_from_slice(b"late");
    let end = log.seal().unwrap();
    assert_eq!(
        loan.commit(),
        Err(EdgeError::Sealed),
        "a late publish is an error, not a loss"
    );
    assert_eq!(producer.try_push(b"after"), Err(EdgeError::Sealed));
    let mut consumer = log.consumer().unwrap();
    assert_eq!(consumer.try_read().unwrap().unwrap().bytes(), b"kept");
    assert_eq!(consumer.try_read().unwrap_err(), EdgeError::Sealed);
    assert_eq!(consumer.read_position(), end);
    assert_eq!(log.seal().unwrap(), end, "sealing twice is harmless");
    Segment::unlink(&name).unwrap();
}

#[test]
fn from_segment_binds_edge_logs_only() {
    use grafos_worker::layout::LayoutError;
    use grafos_worker::layout::header::SegmentKind;
    use grafos_worker::segment::SegmentSpec;
    let instance = TestInstance::new("fromseg");
    let (edge_name, raw_name) = (instance.segment("edge"), instance.segment("raw"));
    EdgeLog::create(&edge_name, &small(1024)).unwrap();
    let opened = Segment::open(&edge_name, &Expect::default()).unwrap();
    assert_eq!(EdgeLog::from_segment(opened).unwrap().max_record(), 504);
    let spec = SegmentSpec {
        kind: SegmentKind::Raw,
        body_len: 4096,
        lease_id: 0,
        instance_token: 0,
        payload: TypeDescriptor::BYTES,
    };
    Segment::create(&raw_name, &spec).unwrap().activate();
    let raw = Segment::open(&raw_name, &Expect::default()).unwrap();
    assert!(matches!(
        EdgeLog::from_segment(raw),
        Err(FabricError::Layout {
            source: LayoutError::KindMismatch { .. },
            ..
        })
    ));
    Segment::unlink(&edge_name).unwrap();
    Segment::unlink(&raw_name).unwrap();
}

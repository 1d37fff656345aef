//! FabricQueues on real mapped segments, within one process.

mod common;

use std::time::Duration;

use common::TestInstance;
use grafos_worker::FabricError;
use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::layout::header::{Expect, TypeDescriptor};
use grafos_worker::layout::queue::QueueError;
use grafos_worker::segment::Segment;

#[test]
fn threads_share_a_queue_through_their_own_handles() {
    const PER_PRODUCER: u64 = 50_000;
    let instance = TestInstance::new("threads");
    let name = instance.segment("q");
    let queue = FabricQueue::create(&name, &QueueConfig::new(64, 16)).unwrap();
    let seen: Vec<std::sync::atomic::AtomicU8> = (0..2 * PER_PRODUCER)
        .map(|_| std::sync::atomic::AtomicU8::new(0))
        .collect();
    std::thread::scope(|s| {
        for p in 0..2 {
            let handle = queue.try_clone().unwrap();
            s.spawn(move || {
                for i in 0..PER_PRODUCER {
                    let value = p * PER_PRODUCER + i;
                    handle.push(&value.to_le_bytes(), None).unwrap();
                }
            });
        }
        for _ in 0..2 {
            let (handle, seen) = (FabricQueue::open(&name).unwrap(), &seen);
            s.spawn(move || {
                for _ in 0..PER_PRODUCER {
                    let record = handle.pop(Some(Duration::from_secs(20))).unwrap();
                    let value = u64::from_le_bytes(record.try_into().unwrap());
                    seen[value as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert!(
        seen.iter()
            .all(|s| s.load(std::sync::atomic::Ordering::Relaxed) == 1),
        "every record popped exactly once"
    );
    assert_eq!(queue.depth(), 0);
    Segment::unlink(&name).unwrap();
}

#[test]
fn loans_write_in_place_and_abandoned_loans_are_skipped() {
    let instance = TestInstance::new("loan");
    let name = instance.segment("q");
    let queue = FabricQueue::create(&name, &QueueConfig::new(4, 32)).unwrap();
    let mut loan = queue.try_reserve(5).unwrap();
    loan.as_mut_slice().copy_from_slice(b"hello");
    assert_eq!(loan.commit(), Ok(0));
    let mut dropped = queue.try_reserve(3).unwrap();
    dropped.as_mut_slice().copy_from_slice(b"bye");
    drop(dropped);
    queue.try_push(b"after").unwrap();
    assert_eq!(queue.try_pop().unwrap().unwrap(), b"hello");
    let guard = queue.try_pop_ref().unwrap().unwrap();
    assert_eq!(&*guard, b"after", "the abandoned loan is skipped");
    assert_eq!(guard.position(), 2);
    guard.finish().unwrap();
    assert_eq!(queue.try_pop().unwrap(), None);
    let counters = queue.counters();
    assert_eq!((counters.abandoned, counters.tombs_skipped), (1, 1));
    Segment::unlink(&name).unwrap();
}

#[test]
fn a_borrowed_record_holds_its_slot_until_released() {
    let instance = TestInstance::new("borrow");
    let name = instance.segment("q");
    let queue = FabricQueue::create(&name, &QueueConfig::new(1, 8)).unwrap();
    queue.try_push(b"one").unwrap();
    let guard = queue.try_pop_ref().unwrap().unwrap();
    assert_eq!(queue.try_push(b"two"), Err(QueueError::Full));
    assert_eq!(guard.to_vec(), b"one");
    drop(guard);
    queue.try_push(b"two").unwrap();
    assert_eq!(queue.pop(Some(Duration::from_secs(1))).unwrap(), b"two");
    Segment::unlink(&name).unwrap();
}

#[test]
fn bad_input_gets_clear_errors() {
    let instance = TestInstance::new("bad");
    let name = instance.segment("q");
    assert!(matches!(
        FabricQueue::create(&name, &QueueConfig::new(0, 8)),
        Err(FabricError::InvalidArgument(_))
    ));
    assert!(matches!(
        FabricQueue::create(&name, &QueueConfig::new(8, 0)),
        Err(FabricError::InvalidArgument(_))
    ));
    let queue = FabricQueue::create(&name, &QueueConfig::new(3, 8)).unwrap();
    assert_eq!(
        queue.try_push(&[0; 9]),
        Err(QueueError::TooLarge { len: 9, max: 8 })
    );
    assert_eq!(
        queue.try_push(&[0; 9]).unwrap_err().to_string(),
        "record of 9 bytes exceeds the stride of 8 bytes"
    );
    // An edge log is not a queue.
    let edge = instance.segment("edge");
    grafos_worker::edge::EdgeLog::create(&edge, &Default::default()).unwrap();
    assert!(matches!(
        FabricQueue::open(&edge),
        Err(FabricError::Layout { .. })
    ));
    Segment::unlink(&edge).unwrap();
    Segment::unlink(&name).unwrap();
}

#[test]
fn typed_records_round_trip_and_payload_types_are_checked() {
    let instance = TestInstance::new("typed");
    let name = instance.segment("q");
    let config = QueueConfig {
        payload: TypeDescriptor::pod::<u64>(),
        ..QueueConfig::new(8, 16)
    };
    let queue = FabricQueue::create(&name, &config).unwrap();
    let wrong = Expect {
        payload: Some(TypeDescriptor::pod::<u32>()),
        ..Expect::default()
    };
    assert!(matches!(
        FabricQueue::open_with(&name, &wrong),
        Err(FabricError::Layout { .. })
    ));
    queue.try_push_pod(&42u64).unwrap();
    queue.try_push(b"short").unwrap();
    assert_eq!(queue.try_pop_pod::<u64>().unwrap(), Some(42));
    assert!(matches!(
        queue.try_pop_pod::<u64>(),
        Err(FabricError::WrongSize {
            expected: 8,
            found: 5
        })
    ));
    assert_eq!(queue.try_pop_pod::<u64>().unwrap(), None);
    Segment::unlink(&name).unwrap();
}

#[test]
fn serde_records_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Job {
        id: u32,
        name: String,
    }
    let instance = TestInstance::new("serde");
    let name = instance.segment("q");
    let queue = FabricQueue::create(&name, &QueueConfig::new(8, 64)).unwrap();
    let job = Job {
        id: 3,
        name: "resize".into(),
    };
    queue.push_serde(&job, None).unwrap();
    let got: Job = queue.pop_serde(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(got, job);
    Segment::unlink(&name).unwrap();
}

#[test]
fn blocking_calls_time_out_and_a_seal_ends_them() {
    let instance = TestInstance::new("block");
    let name = instance.segment("q");
    let queue = FabricQueue::create(&name, &QueueConfig::new(2, 8)).unwrap();
    assert_eq!(
        queue.pop(Some(Duration::from_millis(20))).unwrap_err(),
        QueueError::TimedOut
    );
    queue.try_push(b"a").unwrap();
    queue.try_push(b"b").unwrap();
    assert_eq!(
        queue
            .push(b"c", Some(Duration::from_millis(20)))
            .unwrap_err(),
        QueueError::TimedOut
    );
    let sealer = FabricQueue::open(&name).unwrap();
    let waiter = std::thread::spawn(move || queue.push(b"c", Some(Duration::from_secs(20))));
    // Asleep already or not, the producer's push ends with `Sealed` (a
    // sleeper is woken by the seal, well before its 20 s deadline).
    sealer.seal().unwrap();
    assert_eq!(waiter.join().unwrap().unwrap_err(), QueueError::Sealed);
    assert_eq!(sealer.try_pop().unwrap().unwrap(), b"a");
    assert_eq!(sealer.try_pop().unwrap().unwrap(), b"b");
    assert_eq!(sealer.try_pop().unwrap_err(), QueueError::Sealed);
    assert_eq!(
        sealer.pop(Some(Duration::from_secs(5))).unwrap_err(),
        QueueError::Sealed
    );
    Segment::unlink(&name).unwrap();
}

#[test]
fn participants_are_released_on_drop_and_capped() {
    let instance = TestInstance::new("participants");
    let name = instance.segment("q");
    let first = FabricQueue::create(&name, &QueueConfig::new(2, 8)).unwrap();
    let mut handles = vec![];
    loop {
        match first.try_clone() {
            Ok(handle) => handles.push(handle),
            Err(FabricError::Queue(QueueError::TooManyParticipants)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(handles.len(), 63, "64 entries in all");
    let incarnations: std::collections::HashSet<_> = handles
        .iter()
        .map(|h| h.participant().incarnation())
        .collect();
    assert_eq!(incarnations.len(), 63, "incarnations are distinct");
    handles.truncate(10);
    assert!(
        first.try_clone().is_ok(),
        "dropped handles free their entries"
    );
    Segment::unlink(&name).unwrap();
}

//! The uncontended data path makes no futex system call; a sleeping
//! consumer is woken by exactly the calls the protocol needs. (Its own test
//! binary: the syscall counter is process-wide.)

mod common;

use std::time::Duration;

use common::TestInstance;
use grafos_worker::edge::{EdgeConfig, EdgeLog};
use grafos_worker::futex::futex_syscalls;
use grafos_worker::segment::Segment;

#[test]
fn uncontended_push_and_read_make_no_syscall_but_sleepers_are_woken() {
    let instance = TestInstance::new("syscalls");
    let name = instance.segment("edge");
    let log = EdgeLog::create(
        &name,
        &EdgeConfig {
            capacity: 4096,
            ..EdgeConfig::default()
        },
    )
    .unwrap();
    let mut producer = log.producer().unwrap();
    let mut consumer = log.consumer().unwrap();

    let before = futex_syscalls();
    for i in 0..100_000u64 {
        producer.push(&i.to_le_bytes(), None).unwrap();
        let record = consumer.read(None).unwrap();
        assert_eq!(record.bytes(), i.to_le_bytes());
        consumer.commit_read();
    }
    assert_eq!(
        futex_syscalls() - before,
        0,
        "uncontended operations made futex calls"
    );

    // Now the consumer sleeps (another thread), and a push must wake it.
    let reader = std::thread::spawn(move || {
        let record = consumer.read(Some(Duration::from_secs(20))).unwrap();
        record.bytes().to_vec()
    });
    let before = futex_syscalls();
    // Deadline, not a sleep: wait until the reader has made its futex call.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while futex_syscalls() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "consumer never went to sleep"
        );
        std::thread::yield_now();
    }
    producer.push(b"wake", None).unwrap();
    assert_eq!(reader.join().unwrap(), b"wake");
    assert!(futex_syscalls() - before >= 2, "expected a wait and a wake");
    Segment::unlink(&name).unwrap();
}

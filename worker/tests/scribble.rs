//! Shared memory is untrusted input: random bytes written over a live edge
//! log's header and body (as another process could) make opening and
//! reading fail with errors, never panic or read out of bounds.

mod common;

use std::os::unix::fs::FileExt;

use common::TestInstance;
use grafos_worker::edge::{EdgeConfig, EdgeLog};
use grafos_worker::segment::Segment;
use proptest::prelude::*;

const CAPACITY: u64 = 256;
/// Header (256) + edge control block (768) + ring.
const SEGMENT_LEN: u64 = 256 + 768 + CAPACITY;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn scribbles_yield_errors_not_panics(
        records in 0usize..20,
        scribbles in proptest::collection::vec((0..SEGMENT_LEN, proptest::collection::vec(any::<u8>(), 1..16)), 1..6),
    ) {
        let instance = TestInstance::new("scribble");
        let name = instance.segment("edge");
        let log = EdgeLog::create(&name, &EdgeConfig { capacity: CAPACITY, ..EdgeConfig::default() }).unwrap();
        {
            let mut producer = log.producer().unwrap();
            for i in 0..records {
                let _ = producer.try_push(&vec![i as u8; i * 3]);
            }
        }
        let file = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/{name}")).unwrap();
        for (offset, bytes) in &scribbles {
            let end = (*offset as usize + bytes.len()).min(SEGMENT_LEN as usize);
            file.write_all_at(&bytes[..end - *offset as usize], *offset).unwrap();
        }
        if let Ok(reopened) = EdgeLog::open(&name) {
            if let Ok(mut consumer) = reopened.consumer() {
                for _ in 0..64 {
                    match consumer.try_read() {
                        Ok(Some(record)) => {
                            // Touch every byte: a record reaching outside
                            // the ring would read out of bounds here.
                            let copy = record.bytes().to_vec();
                            prop_assert!(copy.len() <= reopened.max_record());
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = consumer.commit(consumer.read_position());
            }
            if let Ok(mut producer) = reopened.producer() {
                let _ = producer.try_push(b"after the scribble");
            }
        }
        drop(log);
        Segment::unlink(&name).unwrap();
    }
}

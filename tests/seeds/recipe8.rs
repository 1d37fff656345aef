//! Recipe 8's snippets: a relocatable edge made from a leased queue and a
//! handoff record, relocated by hand and by failures, followed by another
//! process.

// The seed clones its (Copy) locator.
#![allow(clippy::clone_on_copy)]

// The alias prelude: the seed's module paths.
use grafos_worker::block::{BlockBuilder, BlockLease};
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::control::Request;
use grafos_worker::fence::FenceEpoch;
use grafos_worker::locator::QueueLocator;
use grafos_worker::locator::handoff::{HandoffReader, HandoffState, HandoffWriter};
use grafos_worker::mem::{MemBuilder, MemLease};
use grafos_worker::participant::call;
use grafos_worker::pipeline::RelocatableQueueEdge;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use grafos_worker::segment::list_segments;

use crate::SeedResult;

/// Set in a second process of this binary: its role.
pub const PEER_ENV: &str = "GRAFOS_SEED_PEER";
const HANDOFF_ENV: &str = "GRAFOS_SEED_HANDOFF";
const COUNT_ENV: &str = "GRAFOS_SEED_COUNT";

/// The seed's snippet, as given (plus `?` on the constructors that touch
/// shared memory).
fn seed_edge() -> Result<RelocatableQueueEdge<Vec<u8>>, Box<dyn std::error::Error>> {
    let queue_lease = MemBuilder::new()
        .min_bytes(8192)
        .lease_secs(300)
        .acquire()?;
    let queue_lease_id = queue_lease.lease_id();
    let queue: FabricQueue<Vec<u8>> = FabricQueue::new(queue_lease, 16, 256)?;
    let locator = QueueLocator::new(queue_lease_id, 0, 1);
    let handoff_lease = BlockBuilder::new()
        .min_blocks(64)
        .lease_secs(600)
        .acquire()?;
    let initial = HandoffState {
        stage_id: 1,
        generation: FenceEpoch::zero(),
        locator: locator.clone(),
    };
    let mut writer = HandoffWriter::new(initial, handoff_lease)?;
    writer.publish(locator.clone())?;
    let reader: HandoffReader<QueueLocator> = HandoffReader::new(writer.into_block_lease())?;
    let edge = RelocatableQueueEdge::new(queue, locator, reader)?;
    Ok(edge)
}

pub fn edge_round_trip() -> SeedResult {
    let mut edge = seed_edge()?;
    edge.push(&b"event-1".to_vec())?;
    let item = edge.pop()?;
    assert_eq!(item, b"event-1");
    edge.commit()?;
    assert_eq!(edge.generation(), FenceEpoch::from_value(1));
    Ok(())
}

pub fn relocate_makes_cached_stale() -> SeedResult {
    let mut edge = seed_edge()?;
    for i in 0..3 {
        edge.push(&format!("event-{i}").into_bytes())?;
    }
    assert_eq!(edge.pop()?, b"event-0");
    edge.commit()?;
    let old_lease = edge.locator().lease_id;

    let cached = edge.generation();
    edge.relocate()?;
    assert!(edge.generation().is_stale(&cached));
    assert!(!cached.is_stale(&edge.generation()));

    assert_ne!(edge.locator().lease_id, old_lease, "a fresh segment");
    assert_eq!(edge.pop()?, b"event-1", "uncommitted records were carried");
    assert_eq!(edge.pop()?, b"event-2");
    edge.push(&b"event-3".to_vec())?;
    assert_eq!(edge.pop()?, b"event-3");
    let stats = edge.stats();
    assert_eq!(
        (stats.relocations, stats.carried, stats.lost_spans),
        (1, 2, 0)
    );
    // The old segment's lease is given back at the edge's next lease
    // check (once a second), and its segment goes.
    let old_segment = format!("lease.{old_lease}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_segments(edge_instance())?.contains(&old_segment) {
        assert!(
            Instant::now() < deadline,
            "{old_segment} was never released"
        );
        assert_eq!(edge.pop_timeout(Some(Duration::from_millis(50)))?, None);
    }
    Ok(())
}

/// Items pushed by this process and popped by another while the edge is
/// relocated by hand and by poisoning its segment.
pub fn other_process_follows() -> SeedResult {
    const COUNT: u32 = 3000;
    let mut edge = seed_edge()?;
    let handoff_id = edge.handoff_lease_id();
    let mut peer = Command::new(std::env::current_exe()?)
        .env(PEER_ENV, "consumer")
        .env(HANDOFF_ENV, handoff_id.to_string())
        .env(COUNT_ENV, COUNT.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut relocated_by_poison = 0;
    for i in 0..COUNT {
        if i == COUNT / 3 {
            edge.relocate()?;
        }
        if i == 2 * COUNT / 3 {
            let lease_id = edge.locator().lease_id;
            call(edge_instance(), &Request::Poison { lease_id })?;
            relocated_by_poison = lease_id;
        }
        edge.push(&format!("event-{i}").into_bytes())?;
    }
    // Read on a thread of its own, so a stuck peer fails the test at the
    // deadline instead of hanging it.
    let out = BufReader::new(peer.stdout.take().expect("piped"));
    let (send, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = peer.kill();
                panic!("the peer took over 30 s: {lines:?}");
            }
        }
    }
    let status = peer.wait()?;
    assert!(status.success(), "the peer failed: {lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("received 3000 in order")
    );
    // Each move was followed by the peer, or made by it (the poisoned
    // segment is relocated by whichever end notices first).
    let moves: Vec<u64> = lines[lines.len() - 2]
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        moves.iter().sum::<u64>() >= 2,
        "the peer followed: {lines:?}"
    );
    assert!(edge.generation().value() >= 3, "two relocations at least");
    assert_ne!(edge.locator().lease_id, relocated_by_poison);
    Ok(())
}

/// An expired edge segment stays readable for its grace period: the
/// first handle to notice relocates it and carries every record.
pub fn expired_lease_relocates() -> SeedResult {
    let mut edge = seed_edge()?;
    for i in 0..5 {
        edge.push(&format!("event-{i}").into_bytes())?;
    }
    let lease_id = edge.locator().lease_id;
    call(edge_instance(), &Request::Expire { lease_id })?;
    for i in 0..5 {
        assert_eq!(edge.pop()?, format!("event-{i}").into_bytes());
    }
    let stats = edge.stats();
    assert_eq!(
        (stats.relocations, stats.carried, stats.lost_spans),
        (1, 5, 0)
    );
    assert_ne!(edge.locator().lease_id, lease_id);
    Ok(())
}

/// A record scribbled over in a poisoned segment cannot be carried: the
/// relocation counts it lost and carries the rest.
pub fn uncarried_records_are_counted() -> SeedResult {
    let mut edge = seed_edge()?;
    edge.push(&b"event-0".to_vec())?;
    let second = edge.push(&b"event-1".to_vec())?;
    let lease_id = edge.locator().lease_id;
    // The second record's header: the ring follows the 768-byte control
    // block at the edge's offset (0).
    let scribbler = MemLease::open(lease_id)?;
    scribbler.write_at(768 + second, &[0xFF; 8])?;
    drop(scribbler);
    call(edge_instance(), &Request::Poison { lease_id })?;
    assert_eq!(edge.pop()?, b"event-0");
    assert_eq!(edge.try_pop()?, None, "the scribbled record is gone");
    let stats = edge.stats();
    assert_eq!(
        (stats.relocations, stats.carried, stats.lost_spans),
        (1, 1, 1)
    );
    edge.push(&b"event-2".to_vec())?;
    assert_eq!(edge.pop()?, b"event-2");
    Ok(())
}

fn edge_instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| std::env::var("GRAFOS_INSTANCE").expect("set by main"))
}

/// The second process: pops `COUNT` items in order.
pub fn peer(role: &str) {
    assert_eq!(role, "consumer");
    let handoff: u64 = std::env::var(HANDOFF_ENV).unwrap().parse().unwrap();
    let count: u32 = std::env::var(COUNT_ENV).unwrap().parse().unwrap();
    let run = || -> SeedResult {
        let reader: HandoffReader<QueueLocator> = HandoffReader::new(BlockLease::open(handoff)?)?;
        let mut edge: RelocatableQueueEdge<Vec<u8>> = RelocatableQueueEdge::open(reader)?;
        for i in 0..count {
            let item = edge.pop()?;
            if item != format!("event-{i}").into_bytes() {
                return Err(format!("item {i}: {:?}", String::from_utf8_lossy(&item)).into());
            }
            edge.commit()?;
        }
        let stats = edge.stats();
        println!(
            "rebinds {} relocations {}",
            stats.rebinds, stats.relocations
        );
        println!("received {count} in order");
        Ok(())
    };
    if let Err(e) = run() {
        println!("peer failed: {e}");
        std::process::exit(1);
    }
}

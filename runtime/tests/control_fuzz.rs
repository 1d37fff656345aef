//! 100,000 generated control messages, handled in-process by a
//! supervisor whose clock the test drives: whatever the bytes, every reply
//! decodes, the supervisor's bookkeeping stays consistent (budgets equal
//! the leases that hold them, rows mirrored, holders attached) through
//! expiry, grace and unlinking, and a well-formed request is still served.

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::Duration;

use grafos_runtime::supervisor::{Config, Ending, Peer, Supervisor};
use grafos_worker::control::{
    ControlError, MAX_MESSAGE, PROTOCOL_VERSION, Reply, Request, decode, encode,
};
use grafos_worker::host::unix_time_ms;
use grafos_worker::instance::InstancePaths;
use grafos_worker::participant::liveness_file;
use grafos_worker::process::ProcessId;
use grafos_worker::segment::{list_segments, unlink_object};
use proptest::prelude::*;

const POOL: u64 = 1 << 20;
const PEERS: usize = 3;

fn request() -> impl Strategy<Value = Request> {
    let id = prop_oneof![4 => 0..12u64, 1 => any::<u64>()];
    let secs = prop_oneof![4 => 0..4u64, 1 => any::<u64>()];
    let bytes = prop_oneof![4 => 0..5 * 4096u64, 1 => any::<u64>()];
    let holds = prop::collection::vec((0..12u64, any::<u32>()), 0..4);
    prop_oneof![
        1 => Just(Request::Ping),
        2 => holds.prop_map(|holds| Request::Attach { holds }),
        4 => (bytes.clone(), secs.clone()).prop_map(|(min_bytes, lease_secs)| Request::AcquireMem {
            min_bytes,
            lease_secs
        }),
        2 => (bytes, secs.clone()).prop_map(|(min_blocks, lease_secs)| Request::AcquireBlock {
            min_blocks: min_blocks / 4096,
            lease_secs
        }),
        2 => id.clone().prop_map(|lease_id| Request::Open { lease_id }),
        2 => (id.clone(), secs).prop_map(|(lease_id, lease_secs)| Request::Renew {
            lease_id,
            lease_secs
        }),
        2 => id.clone().prop_map(|lease_id| Request::Release { lease_id }),
        2 => id.clone().prop_map(|lease_id| Request::Unhold { lease_id }),
        1 => id.clone().prop_map(|lease_id| Request::Expire { lease_id }),
        1 => id.prop_map(|lease_id| Request::Poison { lease_id }),
    ]
}

/// A message: a valid request, or one damaged in a way a buggy or hostile
/// client might send.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => request().prop_map(|r| encode(&r)),
        // Truncated.
        1 => (request(), any::<prop::sample::Index>()).prop_map(|(r, cut)| {
            let bytes = encode(&r);
            bytes[..cut.index(bytes.len())].to_vec()
        }),
        // One byte flipped.
        1 => (request(), any::<prop::sample::Index>(), 1..=255u8).prop_map(|(r, at, bits)| {
            let mut bytes = encode(&r);
            let i = at.index(bytes.len());
            bytes[i] ^= bits;
            bytes
        }),
        // Another version.
        1 => (request(), any::<u16>()).prop_map(|(r, v)| {
            let mut bytes = encode(&r);
            bytes[4..6].copy_from_slice(&v.to_le_bytes());
            bytes
        }),
        // Garbage after a good frame header, or garbage alone.
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
            let mut bytes = b"GRFC".to_vec();
            bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend(tail);
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        // Oversized.
        1 => Just(vec![7u8; MAX_MESSAGE + 1]),
    ]
}

/// One step: which peer sends, whether that peer's participant ends
/// first (its connection closed; a stale incarnation may follow), how far
/// the clock moves, and the message.
fn step() -> impl Strategy<Value = (usize, bool, u64, Vec<u8>)> {
    (0..PEERS, prop::bool::weighted(0.02), 0..400u64, message())
}

/// Removes everything of the instance, also when the test fails.
struct Cleanup {
    name: String,
    root: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for object in list_segments(&self.name).unwrap_or_default() {
            let _ = unlink_object(&self.name, &object);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn generated_messages_never_crash_wedge_or_unbalance_the_supervisor() {
    let name = format!("fuzz{}", std::process::id());
    let root = std::env::temp_dir().join(format!("grafos-test-{name}"));
    let _cleanup = Cleanup {
        name: name.clone(),
        root: root.clone(),
    };
    let paths = InstancePaths::in_root(&name, &root).unwrap();
    std::fs::create_dir_all(paths.participants_dir()).unwrap();
    // This process attaches as itself, holding its liveness file as a
    // worker would.
    let me = ProcessId::current();
    let liveness = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(liveness_file(&paths, me))
        .unwrap();
    rustix::fs::flock(&liveness, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let config = Config {
        pool_size: POOL,
        block_pool_size: POOL,
        data_dir: paths.default_data_dir(),
        grace: Duration::from_secs(1),
        claim_age_limit: Duration::from_secs(10),
    };
    let supervisor = RefCell::new(Supervisor::start(paths.clone(), config).unwrap());
    // The runner takes a `Fn`: state it changes lives in cells.
    let peers = RefCell::new(
        [Peer {
            process: Some(me),
            incarnation: None,
        }; PEERS],
    );
    let clock = Cell::new(unix_time_ms());
    let (handled, errors, granted, unlinked) = (
        Cell::new(0u64),
        Cell::new(0u64),
        Cell::new(0u64),
        Cell::new(0u64),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let batch = prop::collection::vec(step(), 100);
    runner
        .run(&batch, |steps| {
            let mut supervisor = supervisor.borrow_mut();
            let mut peers = peers.borrow_mut();
            for (who, end, advance, message) in &steps {
                let peer = &mut peers[*who];
                clock.set(clock.get() + advance);
                if *end && let Some(incarnation) = peer.incarnation {
                    // The connection keeps its stale incarnation, as a
                    // request racing the hang-up would.
                    supervisor.participant_ended(incarnation, Ending::Detached, clock.get());
                }
                let raw = supervisor.handle_message(peer, message, clock.get());
                let reply = decode::<Reply>(&raw);
                prop_assert!(reply.is_ok(), "undecodable reply {raw:?}");
                match reply.unwrap() {
                    Reply::Error(_) => errors.set(errors.get() + 1),
                    Reply::Lease(_) => granted.set(granted.get() + 1),
                    _ => {}
                }
                handled.set(handled.get() + 1);
                let before = supervisor
                    .counters()
                    .get(grafos_worker::layout::registry::Counter::LeasesUnlinked);
                supervisor.tick(clock.get());
                let after = supervisor
                    .counters()
                    .get(grafos_worker::layout::registry::Counter::LeasesUnlinked);
                unlinked.set(unlinked.get() + after - before);
                if let Err(e) = supervisor.check_invariants() {
                    prop_assert!(false, "after {message:?}: {e}");
                }
            }
            // Still serving: a well-formed request gets its answer.
            let pong =
                supervisor.handle_message(&mut peers[0], &encode(&Request::Ping), clock.get());
            prop_assert_eq!(
                decode::<Reply>(&pong),
                Ok(Reply::Pong {
                    pid: std::process::id()
                })
            );
            Ok(())
        })
        .unwrap();
    let (handled, errors, granted, unlinked) =
        (handled.get(), errors.get(), granted.get(), unlinked.get());
    let mut supervisor = supervisor.into_inner();
    assert_eq!(handled, 100_000);
    // The generator reaches refusals, grants and the reaper.
    assert!(errors > 10_000, "only {errors} error replies");
    assert!(granted > 2_000, "only {granted} leases granted");
    assert!(unlinked > 1_000, "only {unlinked} leases unlinked");
    assert_eq!(
        decode::<Reply>(&supervisor.handle_message(
            &mut Peer::default(),
            b"GRFC\x09\x00\x00\x00",
            clock.get()
        )),
        Ok(Reply::Error(ControlError::Version {
            found: 9,
            supported: PROTOCOL_VERSION
        }))
    );
    supervisor.shut_down();
    assert_eq!(list_segments(&name).unwrap(), Vec::<String>::new());
}

//! 100,000 generated control messages, handled in-process: whatever the
//! bytes, the supervisor answers with a decodable reply, keeps its budget
//! within bounds and still serves a well-formed request afterwards.

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use grafos_runtime::supervisor::{Config, Peer, Supervisor};
use grafos_worker::control::{
    ControlError, MAX_MESSAGE, PROTOCOL_VERSION, Reply, Request, decode, encode,
};
use grafos_worker::instance::InstancePaths;
use grafos_worker::layout::registry::Registry;
use grafos_worker::participant::liveness_file;
use grafos_worker::process::ProcessId;
use grafos_worker::registry::Mapped;
use grafos_worker::segment::list_segments;
use proptest::prelude::*;

const POOL: u64 = 1 << 20;

fn request() -> impl Strategy<Value = Request> {
    let id = prop_oneof![0..8u64, any::<u64>()];
    let secs = prop_oneof![0..4u64, any::<u64>()];
    let bytes = prop_oneof![0..3 * 4096u64, any::<u64>()];
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Attach),
        (bytes.clone(), secs.clone()).prop_map(|(min_bytes, lease_secs)| Request::AcquireMem {
            min_bytes,
            lease_secs
        }),
        (bytes, secs.clone()).prop_map(|(min_blocks, lease_secs)| Request::AcquireBlock {
            min_blocks,
            lease_secs
        }),
        id.clone().prop_map(|lease_id| Request::Open { lease_id }),
        (id.clone(), secs).prop_map(|(lease_id, lease_secs)| Request::Renew {
            lease_id,
            lease_secs
        }),
        id.clone()
            .prop_map(|lease_id| Request::Release { lease_id }),
        id.clone().prop_map(|lease_id| Request::Expire { lease_id }),
        id.prop_map(|lease_id| Request::Poison { lease_id }),
    ]
}

/// A message: a valid request, or one damaged in a way a buggy or hostile
/// client might send.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        request().prop_map(|r| encode(&r)),
        // Truncated.
        (request(), any::<prop::sample::Index>()).prop_map(|(r, cut)| {
            let bytes = encode(&r);
            bytes[..cut.index(bytes.len())].to_vec()
        }),
        // One byte flipped.
        (request(), any::<prop::sample::Index>(), 1..=255u8).prop_map(|(r, at, bits)| {
            let mut bytes = encode(&r);
            let i = at.index(bytes.len());
            bytes[i] ^= bits;
            bytes
        }),
        // Another version.
        (request(), any::<u16>()).prop_map(|(r, v)| {
            let mut bytes = encode(&r);
            bytes[4..6].copy_from_slice(&v.to_le_bytes());
            bytes
        }),
        // Garbage after a good frame header, or garbage alone.
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
            let mut bytes = b"GRFC".to_vec();
            bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend(tail);
            bytes
        }),
        prop::collection::vec(any::<u8>(), 0..64),
        // Oversized.
        Just(vec![7u8; MAX_MESSAGE + 1]),
    ]
}

struct Instance {
    root: PathBuf,
    paths: InstancePaths,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn generated_messages_never_crash_or_wedge_the_supervisor() {
    let name = format!("fuzz{}", std::process::id());
    let root = std::env::temp_dir().join(format!("grafos-test-{name}"));
    let instance = Instance {
        paths: InstancePaths::in_root(&name, &root).unwrap(),
        root,
    };
    let paths = &instance.paths;
    std::fs::create_dir_all(paths.participants_dir()).unwrap();
    // This process attaches as itself, holding its liveness file as a
    // worker would.
    let me = ProcessId::current();
    let liveness = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(liveness_file(paths, me))
        .unwrap();
    rustix::fs::flock(&liveness, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let config = Config {
        pool_size: POOL,
        block_pool_size: POOL,
        data_dir: paths.default_data_dir(),
        grace: Duration::ZERO,
    };
    let supervisor = RefCell::new(Supervisor::start(paths.clone(), config).unwrap());
    let registry = Mapped::<Registry>::open(&paths.registry(), None).unwrap();
    // The runner takes a `Fn`: state it changes lives in cells.
    let (handled, errors, granted) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let batch = prop::collection::vec(message(), 100);
    runner
        .run(&batch, |messages| {
            let mut peer = Peer {
                process: Some(me),
                incarnation: None,
            };
            let mut supervisor = supervisor.borrow_mut();
            for message in &messages {
                let raw = supervisor.handle_message(&mut peer, message);
                let reply = decode::<Reply>(&raw);
                prop_assert!(reply.is_ok(), "undecodable reply {raw:?}");
                match reply.unwrap() {
                    Reply::Error(_) => errors.set(errors.get() + 1),
                    Reply::Lease(_) => granted.set(granted.get() + 1),
                    _ => {}
                }
                handled.set(handled.get() + 1);
                let control = &registry.get().control;
                prop_assert!(control.pool_used.load(Relaxed) <= POOL);
                prop_assert!(control.block_used.load(Relaxed) <= POOL);
            }
            // Still serving: a well-formed request gets its answer.
            let pong = supervisor.handle_message(&mut peer, &encode(&Request::Ping));
            prop_assert_eq!(
                decode::<Reply>(&pong),
                Ok(Reply::Pong {
                    pid: std::process::id()
                })
            );
            // The next case's peer is a new connection: this one ends.
            if let Some(incarnation) = peer.incarnation {
                supervisor.participant_ended(
                    incarnation,
                    grafos_runtime::supervisor::Ending::Detached,
                    grafos_worker::host::unix_time_ms(),
                );
            }
            Ok(())
        })
        .unwrap();
    let (handled, errors, granted) = (handled.get(), errors.get(), granted.get());
    let mut supervisor = supervisor.into_inner();
    assert_eq!(handled, 100_000);
    // The generator reaches both the refusals and the grants.
    assert!(errors > 10_000, "only {errors} error replies");
    assert!(granted > 100, "only {granted} leases granted");
    assert_eq!(
        decode::<Reply>(&supervisor.handle_message(&mut Peer::default(), b"GRFC\x09\x00\x00\x00")),
        Ok(Reply::Error(ControlError::Version {
            found: 9,
            supported: PROTOCOL_VERSION
        }))
    );
    drop(registry);
    supervisor.shut_down();
    assert_eq!(list_segments(&name).unwrap(), Vec::<String>::new());
}

//! A worker: a member of the `processors` group. For each notification it
//! reads the object, checksums and transforms it, and writes
//! `results/<key>`; it commits after the results are written, so a record
//! is handled again (never lost) if the worker dies first.

use std::time::{Duration, Instant};

use grafos_worker::FabricError;
use grafos_worker::drain::{Drain, worker_id};
use grafos_worker::kv::FabricKvStore;
use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
use grafos_worker::mq::group::ConsumerGroup;
use grafos_worker::mq::topic::TopicManager;
use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore};

use crate::common::{self, CHECKPOINTS, GROUP, Outcome, RESULTS, Renewals, TOPIC};
use crate::producer::read_u64;

/// Records handled per poll at most.
const BATCH: usize = 256;
/// How long a poll waits for a first record before the worker heartbeats
/// and looks around.
const POLL_WAIT: Duration = Duration::from_millis(10);

/// Handles notifications until the producer is done and the group has
/// committed everything, or a stop is asked for.
pub fn run(partitions: u32) -> Result<(), Box<dyn std::error::Error>> {
    let drain = Drain::install()?;
    let member = worker_id().unwrap_or_else(|| "worker".to_string());
    let incarnation = format!("{member}/{}", std::process::id());
    let instance = grafos_worker::instance::instance_from_env();
    let mut topics = TopicManager::new();
    let (config, options) = common::topic_config(partitions);
    topics.create_or_open(TOPIC, config, options)?;
    let topic_lease = topics.open(TOPIC)?.lease_id();
    let store = MemObjectStore::new(common::STORE_BUCKETS)?;
    let mut checkpoints = FabricKvStore::open(CHECKPOINTS)?;
    let mut renewals = Renewals::new();

    let mut group = ConsumerGroup::new(GROUP, TOPIC, partitions, common::SESSION_TIMEOUT_SECS)?;
    let mut consumer = Consumer::new(TOPIC, GROUP);
    consumer.assign(&group.claim(&member)?);
    consumer.seek(&topics, &group, SeekPolicy::Committed)?;
    println!(
        "{incarnation}: joined {GROUP}, partitions {:?}",
        consumer.assignment()
    );
    let mut handled = 0u64;
    let mut batch: Vec<(String, u64)> = Vec::with_capacity(BATCH);
    let mut last_look = Instant::now();
    loop {
        if drain.requested() {
            let _ = consumer.commit(&mut group);
            println!("{incarnation}: stopping after {handled} records");
            return Ok(());
        }
        batch.clear();
        let mut malformed = None;
        let got = consumer.poll_with_timeout(&topics, BATCH, POLL_WAIT, |p, offset, bytes| {
            match common::parse_notification(bytes) {
                Some((uri, put_us)) => batch.push((uri.to_string(), put_us)),
                None => malformed = malformed.or(Some((p, offset))),
            }
        })?;
        if let Some((p, offset)) = malformed {
            return Err(format!("malformed notification at {TOPIC}/{p}@{offset}").into());
        }
        for (uri, put_us) in &batch {
            process(&store, &instance, &incarnation, uri, *put_us)?;
        }
        handled += batch.len() as u64;
        match consumer.commit(&mut group) {
            Ok(()) => {}
            // A partition moved: the heartbeat below reassigns.
            Err(e) if e.is_fenced() => {}
            Err(e) => return Err(e.into()),
        }
        if group.heartbeat(&member)? {
            consumer.assign(&group.claim(&member)?);
            consumer.seek(&topics, &group, SeekPolicy::Committed)?;
            println!(
                "{incarnation}: rebalanced, partitions {:?}",
                consumer.assignment()
            );
        }
        if got == 0 || last_look.elapsed() >= Duration::from_secs(1) {
            renewals.tick(&store, &[topic_lease, checkpoints.lease_id()])?;
            last_look = Instant::now();
            if got == 0 && finished(&topics, &mut checkpoints)? {
                println!("{incarnation}: all records handled ({handled} here)");
                return Ok(());
            }
        }
    }
}

/// Reads the object `uri` names and writes its result.
fn process(
    store: &MemObjectStore,
    instance: &str,
    incarnation: &str,
    uri: &str,
    put_us: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let uri: FabricUri = uri.parse()?;
    let Some(object) = store.get(&uri)? else {
        return Err(format!("{uri} was notified but is not stored").into());
    };
    // The transform: the object's checksum and size, written back with
    // who did it and when.
    let result = FabricUri::new(instance, RESULTS, uri.key())?;
    let before = store
        .get(&result)?
        .and_then(|b| Outcome::parse(&String::from_utf8_lossy(&b)));
    let (runs, redelivered) = match before {
        None => (1, 0),
        Some(o) => (o.runs + 1, o.redelivered + u32::from(o.put_us == put_us)),
    };
    let outcome = Outcome {
        crc: common::checksum(&object),
        size: object.len() as u64,
        incarnation: incarnation.to_string(),
        put_us,
        done_us: common::unix_us(),
        runs,
        redelivered,
    };
    store.put(&result, outcome.encode().as_bytes(), None)?;
    Ok(())
}

/// Whether the producer is done and the group has committed every record
/// of every partition.
fn finished(topics: &TopicManager, checkpoints: &mut FabricKvStore) -> Result<bool, FabricError> {
    if read_u64(checkpoints, "done")? == 0 {
        return Ok(false);
    }
    let described = topics.describe(TOPIC)?;
    let Some(group) = common::processors(&described) else {
        return Ok(false);
    };
    Ok((0..described.partitions.len()).all(|p| described.lag(group, p) == 0))
}

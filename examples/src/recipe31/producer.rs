//! The producer: stores objects and notifies the topic, paced, resuming
//! from its checkpoint after a restart.

use std::time::{Duration, Instant};

use grafos_worker::drain::Drain;
use grafos_worker::kv::FabricKvStore;
use grafos_worker::mq::producer::Producer;
use grafos_worker::mq::topic::TopicManager;
use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore};

use crate::common::{self, CHECKPOINTS, GROUP, OBJECTS, Renewals, TOPIC};

/// What the producer does.
pub struct ProducerArgs {
    /// Objects to store (keys 0 to N-1).
    pub objects: u64,
    /// Bytes per object.
    pub size: usize,
    /// Objects per second at most (0: unpaced).
    pub rate: u64,
    /// Partitions of the topic.
    pub partitions: u32,
}

/// Checkpoint at least this often (objects).
const CHECKPOINT_EVERY: u64 = 256;

/// Stores objects `next..N` (`next` from the checkpoint), notifying each,
/// then marks the run done.
pub fn run(args: &ProducerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let drain = Drain::install()?;
    let instance = grafos_worker::instance::instance_from_env();
    let mut topics = TopicManager::new();
    let (config, options) = common::topic_config(args.partitions);
    topics.create_or_open(TOPIC, config, options)?;
    let topic_lease = topics.open(TOPIC)?.lease_id();
    let store = MemObjectStore::new(common::STORE_BUCKETS)?;
    let mut checkpoints = FabricKvStore::open(CHECKPOINTS)?;
    let mut renewals = Renewals::new();
    let start = read_u64(&mut checkpoints, "next")?;
    if read_u64(&mut checkpoints, "done")? > 0 {
        println!("producer: all {} objects were stored already", args.objects);
        return Ok(());
    }
    if start > 0 {
        println!("producer: resuming at object {start} (checkpoint)");
    }
    wait_for_group(&topics, &drain)?;
    let mut notifier = Producer::new(TOPIC);
    let began = Instant::now();
    let mut last_report = Instant::now();
    let mut checkpointed = start;
    for i in start..args.objects {
        if drain.requested() {
            checkpoints.put("next", &i.to_le_bytes())?;
            println!("producer: stopped at object {i} (checkpoint saved)");
            return Ok(());
        }
        if args.rate > 0 {
            let due = began + Duration::from_secs_f64((i - start) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let key = common::object_key(i);
        let uri = FabricUri::new(&instance, OBJECTS, &key)?;
        let put_us = common::unix_us();
        store.put(&uri, &common::object_body(i, args.size), None)?;
        let note = common::notification(&uri.to_string(), put_us);
        notifier.send_keyed(&mut topics, key.as_bytes(), note.as_bytes())?;
        if i + 1 - checkpointed >= CHECKPOINT_EVERY {
            checkpoints.put("next", &(i + 1).to_le_bytes())?;
            checkpointed = i + 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            renewals.tick(&store, &[topic_lease, checkpoints.lease_id()])?;
            println!(
                "producer: {:6} / {} objects stored and notified ({:.0}/s)",
                i + 1,
                args.objects,
                (i + 1 - start) as f64 / began.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    checkpoints.put("next", &args.objects.to_le_bytes())?;
    checkpoints.put("done", &1u64.to_le_bytes())?;
    println!(
        "producer: all {} objects stored and notified in {:.1} s",
        args.objects,
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A checkpoint word (0 when absent).
pub fn read_u64(kv: &mut FabricKvStore, key: &str) -> grafos_worker::Result<u64> {
    Ok(kv
        .get(key)?
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_le_bytes))
}

/// Waits until the workers' group holds the topic's producers back, so
/// no notification is sent before someone will read it.
fn wait_for_group(topics: &TopicManager, drain: &Drain) -> grafos_worker::Result<()> {
    let mut said = false;
    loop {
        let holding = common::processors(&topics.describe(TOPIC)?).is_some_and(|g| g.holding);
        if holding || drain.requested() {
            return Ok(());
        }
        if !said {
            println!("producer: waiting for the {GROUP} group to join {TOPIC}");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! What recipe 31's processes agree on: names, the objects' bytes, the
//! notification and the result formats.
#![allow(dead_code)] // Each binary uses part of it.

use std::time::Duration;

use grafos_worker::mq::topic::{TopicConfig, TopicOptions};

/// The notification topic.
pub const TOPIC: &str = "object-events";
/// The consumer group of the workers.
pub const GROUP: &str = "processors";
/// The bucket of the objects the producer stores.
pub const OBJECTS: &str = "objects";
/// The bucket of the workers' results.
pub const RESULTS: &str = "results";
/// The key-value store of the producer's checkpoint.
pub const CHECKPOINTS: &str = "recipe31";
/// Buckets of the object store (made by whichever process comes first).
pub const STORE_BUCKETS: u64 = 1 << 16;
/// A member silent this long loses its partitions (a dead one at once).
pub const SESSION_TIMEOUT_SECS: u64 = 30;

/// The topic's shape: backpressure, so no notification is overwritten
/// before the group has read it.
pub fn topic_config(partitions: u32) -> (TopicConfig, TopicOptions) {
    (
        TopicConfig {
            num_partitions: partitions,
            partition_capacity: 4096,
            partition_stride: 128,
        },
        TopicOptions {
            group_retention: Duration::from_secs(300),
            ..TopicOptions::backpressure()
        },
    )
}

/// The workers' group in a description of the topic, once it exists.
pub fn processors(
    topic: &grafos_worker::mq::topic::TopicDescription,
) -> Option<&grafos_worker::mq::topic::GroupDescription> {
    topic.groups.iter().find(|g| g.name == GROUP)
}

/// The key of object `i`.
pub fn object_key(i: u64) -> String {
    format!("obj-{i:07}")
}

/// The index in a key made by [`object_key`].
pub fn object_index(key: &str) -> Option<u64> {
    key.strip_prefix("obj-")?.parse().ok()
}

/// Object `i`'s bytes: its key, then printable filler up to `size`
/// bytes; the same on every put (a producer that resumes stores the same
/// object again), and different for every key.
pub fn object_body(i: u64, size: usize) -> Vec<u8> {
    static FILLER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let filler = FILLER.get_or_init(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..65_536 + 4_096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b'a' + (state % 26) as u8
            })
            .collect()
    });
    let mut body = object_key(i).into_bytes();
    body.truncate(size);
    let start = (i as usize * 61) % 4096;
    body.extend_from_slice(&filler[start..start + size - body.len()]);
    body
}

/// The CRC-32 of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A notification: the object's URI and when it was put (Unix us).
pub fn notification(uri: &str, put_us: u64) -> String {
    format!("{uri} {put_us}")
}

/// `(uri, put_us)` of a notification.
pub fn parse_notification(bytes: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (uri, put) = text.split_once(' ')?;
    Some((uri, put.parse().ok()?))
}

/// What a worker writes at `results/<key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// CRC-32 of the object read.
    pub crc: u32,
    /// Bytes of the object read.
    pub size: u64,
    /// The worker that wrote it and its process: `worker.1/12345`.
    pub incarnation: String,
    /// When the object was put (Unix us, from its notification).
    pub put_us: u64,
    /// When this result was written (Unix us).
    pub done_us: u64,
    /// Times the object was handled (1, plus one per later handling of
    /// it, whatever the cause).
    pub runs: u32,
    /// Times a notification was handled again after a result for that
    /// very notification (same put time) was written: redelivery to a new
    /// owner after a member died or its partitions moved. A producer's
    /// repeated notifications after a restart are not counted here.
    pub redelivered: u32,
}

impl Outcome {
    /// One line of text.
    pub fn encode(&self) -> String {
        format!(
            "crc32={:08x} size={} incarnation={} put_us={} done_us={} runs={} redelivered={}\n",
            self.crc,
            self.size,
            self.incarnation,
            self.put_us,
            self.done_us,
            self.runs,
            self.redelivered
        )
    }

    /// Parses what [`Outcome::encode`] wrote.
    pub fn parse(text: &str) -> Option<Outcome> {
        let mut fields = std::collections::BTreeMap::new();
        for pair in text.split_whitespace() {
            let (k, v) = pair.split_once('=')?;
            fields.insert(k, v);
        }
        Some(Outcome {
            crc: u32::from_str_radix(fields.get("crc32")?, 16).ok()?,
            size: fields.get("size")?.parse().ok()?,
            incarnation: (*fields.get("incarnation")?).to_string(),
            put_us: fields.get("put_us")?.parse().ok()?,
            done_us: fields.get("done_us")?.parse().ok()?,
            runs: fields.get("runs")?.parse().ok()?,
            redelivered: fields.get("redelivered")?.parse().ok()?,
        })
    }
}

/// Unix time in microseconds.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `q` quantile (0 to 1) of sorted `values`.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Keeps every lease the pipeline stands on alive (the object store's
/// arenas, the topic, the checkpoint store) with a `RenewalManager`,
/// registering arenas as the store adds them. Renewals move a deadline to
/// an hour from now (the leases' own TTL), never closer.
pub struct Renewals {
    manager: grafos_worker::leasekit::RenewalManager,
    last: std::time::Instant,
}

impl Renewals {
    /// Renewal of leases to an hour ahead (the store's and topic's TTL).
    pub const LEASE_SECS: u64 = 3600;

    /// A manager with nothing registered yet.
    pub fn new() -> Renewals {
        Renewals {
            manager: grafos_worker::leasekit::RenewalManager::new(),
            last: std::time::Instant::now() - Duration::from_secs(60),
        }
    }

    /// At most once a second: registers leases not seen before (due at
    /// once) and renews those due.
    ///
    /// # Errors
    /// Listing the store's leases failed; a lease that cannot be renewed
    /// any more (expired, poisoned) is an error too.
    pub fn tick(
        &mut self,
        store: &grafos_worker::store::MemObjectStore,
        others: &[u64],
    ) -> grafos_worker::Result<()> {
        if self.last.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        self.last = std::time::Instant::now();
        let known: std::collections::BTreeSet<u64> = self.manager.registered().collect();
        for id in store
            .map()
            .lease_ids()?
            .into_iter()
            .chain(others.iter().copied())
        {
            if !known.contains(&id) {
                let policy = grafos_worker::leasekit::RenewalPolicy::new(Self::LEASE_SECS);
                self.manager.register(id, 0, policy);
            }
        }
        let summary = self.manager.tick(grafos_worker::host::unix_time_secs());
        match summary.lost.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

/// The `grafos run` topology of the pipeline: `workers` worker replicas
/// first (the producer waits for their group), then the producer, all
/// running `exe` (the recipe31 binary).
pub fn topology(
    exe: &std::path::Path,
    objects: u64,
    size: usize,
    rate: u64,
    partitions: u32,
    workers: u32,
) -> String {
    let exe = exe.display();
    format!(
        r#"[supervision]
strategy = "one_for_one"
max_restarts = 1000
period_secs = 60
shutdown_grace_secs = 5

[[worker]]
name = "worker"
command = "{exe}"
args = ["worker", "--partitions", "{partitions}"]
replicas = {workers}
restart = "transient"
env = {{ RUST_LOG = "warn" }}

[[worker]]
name = "producer"
command = "{exe}"
args = ["producer", "--objects", "{objects}", "--size", "{size}", "--rate", "{rate}", "--partitions", "{partitions}"]
replicas = 1
restart = "transient"
env = {{ RUST_LOG = "warn" }}
"#
    )
}

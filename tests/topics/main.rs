//! Topics between real processes: producers and consumer groups SIGKILLed
//! at random (and producers at crash points inside an append), checked
//! against a log of acknowledged sends; and readers lapped on purpose on
//! an overwriting topic, checked for torn records.
//!
//! One binary with its own harness (a supervisor for a private instance
//! runs on a thread); it re-executes itself as the peer processes
//! (`GRAFOS_TOPIC_PEER=producer|consumer:GROUP|reader`), each writing
//! its log lines (one `write` each) to a file of its own.

#[path = "../common/arm.rs"]
mod arm;
#[path = "../common/harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use grafos_runtime::supervisor::Config;
use grafos_shm_layout::crash::CrashPoint;
use grafos_worker::FabricError;
use grafos_worker::kv::FabricKvStore;
use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
use grafos_worker::mq::offset::MemOffsetStore;
use grafos_worker::mq::producer::Producer;
use grafos_worker::mq::topic::{Overflow, TopicConfig, TopicManager, TopicOptions};

const PEER_ENV: &str = "GRAFOS_TOPIC_PEER";
const LOG_ENV: &str = "GRAFOS_TOPIC_LOG";
const GEN_ENV: &str = "GRAFOS_TOPIC_GEN";
const CRASH_ENV: &str = "GRAFOS_TOPIC_CRASH";
const TOPIC_ENV: &str = "GRAFOS_TOPIC_NAME";
/// Every test ends within this.
const TEST_BUDGET: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(role) = std::env::var(PEER_ENV) {
        return peer(&role);
    }
    let instance = harness::Instance::start("topics", |data_dir| Config {
        pool_size: 256 << 20,
        block_pool_size: 16 << 20,
        data_dir,
        grace: Duration::from_secs(1),
        claim_age_limit: Duration::from_secs(2),
    });
    let tests: [(&str, harness::Test); 4] = [
        (
            "producers_and_consumers_killed_deliver_every_acknowledged_send",
            kills,
        ),
        ("lapped_readers_never_see_torn_records", lapped),
        (
            "the_supervisor_repairs_a_producer_dead_mid_append",
            supervisor_repairs,
        ),
        (
            "a_producer_stopped_mid_append_is_killed_and_repaired",
            stuck_producer,
        ),
    ];
    instance.run_with_root(&tests);
}

// ---- records ------------------------------------------------------------

/// FNV-1a of `bytes`.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Producer generation `generation`'s record `seq`, `len` bytes: the two
/// numbers, a filler that varies with them, and a checksum of the rest.
fn record(generation: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&generation.to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    while r.len() < len - 8 {
        r.push(
            (generation
                .wrapping_mul(31)
                .wrapping_add(seq)
                .wrapping_add(r.len() as u64)) as u8,
        );
    }
    let sum = checksum(&r);
    r.extend_from_slice(&sum.to_le_bytes());
    r
}

/// `(generation, seq)` of a well-formed record.
fn parse(r: &[u8]) -> Option<(u64, u64)> {
    if r.len() < 24 {
        return None;
    }
    let (body, sum) = r.split_at(r.len() - 8);
    (checksum(body) == u64::from_le_bytes(sum.try_into().ok()?)).then(|| {
        (
            u64::from_le_bytes(body[..8].try_into().unwrap()),
            u64::from_le_bytes(body[8..16].try_into().unwrap()),
        )
    })
}

// ---- peers --------------------------------------------------------------

fn peer(role: &str) {
    if let Ok(arm) = std::env::var(CRASH_ENV) {
        arm::arm_crash(&arm);
    }
    let log_path = std::env::var(LOG_ENV).expect("log path");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open the log");
    let topic = std::env::var(TOPIC_ENV).expect("topic");
    let generation: u64 = std::env::var(GEN_ENV).expect("generation").parse().unwrap();
    let mut topics = TopicManager::new();
    match role.split_once(':') {
        None if role == "producer" => produce(&mut topics, &topic, generation, &mut log),
        None if role == "reader" => read_slowly(&topics, &topic, &mut log),
        Some(("consumer", group)) => consume(&topics, &topic, group, &mut log),
        _ => panic!("unknown role {role}"),
    }
}

/// Sends records for ever, logging `A partition offset generation seq .`
/// after each acknowledged send (the dot marks a whole line).
fn produce(topics: &mut TopicManager, topic: &str, generation: u64, log: &mut std::fs::File) {
    let len = topics.open(topic).expect("topic").stride() as usize;
    let mut producer = Producer::new(topic).with_timeout(None);
    for seq in 0.. {
        let (p, offset) = producer
            .send(topics, &record(generation, seq, len))
            .expect("send");
        log.write_all(format!("A {p} {offset} {generation} {seq} .\n").as_bytes())
            .expect("log");
    }
}

/// Consumes for ever, logging every record delivered (`D partition offset
/// generation seq .`, or `T partition offset` for a torn one) before
/// committing to the durable offset store; `L` lines for lags.
fn consume(topics: &TopicManager, topic: &str, group: &str, log: &mut std::fs::File) {
    let mut offsets = FabricKvStore::open(&format!("{topic}-{group}")).expect("offset store");
    let mut consumer = Consumer::new(topic, group);
    let partitions = topics.open(topic).expect("topic").partitions();
    consumer.assign(&(0..partitions).collect::<Vec<u32>>());
    consumer
        .seek(topics, &offsets, SeekPolicy::Committed)
        .expect("seek");
    loop {
        match consumer.poll_timeout(topics, 256, Duration::from_millis(100)) {
            Ok(batch) => {
                let mut lines = String::new();
                for (p, m) in &batch {
                    lines += &match parse(&m.payload) {
                        Some((g, s)) => format!("D {p} {} {g} {s} .\n", m.offset),
                        None => format!("T {p} {}\n", m.offset),
                    };
                }
                log.write_all(lines.as_bytes()).expect("log");
                consumer.commit(&mut offsets).expect("commit");
            }
            Err(FabricError::Lagged {
                partition, lost, ..
            }) => {
                log.write_all(format!("L {partition} {lost}\n").as_bytes())
                    .expect("log");
            }
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Reads a little at a time, sleeping between polls so producers lap it;
/// logs `R n` per batch, `T` per torn record, `L lost` per lag, and `O`
/// when a producer's records come out of order within a partition.
fn read_slowly(topics: &TopicManager, topic: &str, log: &mut std::fs::File) {
    let mut consumer = Consumer::new(topic, "slow");
    let partitions = topics.open(topic).expect("topic").partitions();
    consumer.assign(&(0..partitions).collect::<Vec<u32>>());
    consumer
        .seek(topics, &MemOffsetStore::new(), SeekPolicy::Earliest)
        .expect("seek");
    let mut last: HashMap<(u32, u64), u64> = HashMap::new();
    loop {
        match consumer.poll(topics, 4) {
            Ok(batch) => {
                let mut lines = format!("R {}\n", batch.len());
                for (p, m) in &batch {
                    match parse(&m.payload) {
                        Some((g, s)) => {
                            if last.insert((*p, g), s).is_some_and(|prev| prev >= s) {
                                lines += &format!("O {p} {g} {s}\n");
                            }
                        }
                        None => lines += &format!("T {p} {}\n", m.offset),
                    }
                }
                log.write_all(lines.as_bytes()).expect("log");
            }
            Err(FabricError::Lagged { lost, .. }) => {
                log.write_all(format!("L {lost}\n").as_bytes())
                    .expect("log");
                // Read on at once from where the lag left it.
                continue;
            }
            Err(e) => panic!("poll: {e}"),
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

// ---- harness ------------------------------------------------------------

/// Peer processes of one test: spawned with a fresh generation and a log
/// file each, SIGKILLed by pid, and killed on drop if still running.
struct Peers {
    dir: PathBuf,
    topic: String,
    next_generation: u64,
    running: Vec<(String, Child)>,
    /// Log files of every peer spawned, by role.
    logs: Vec<(String, PathBuf)>,
    /// Pids of peers spawned armed with a crash point.
    armed: Vec<u32>,
    /// The crash point each armed peer was armed at, by pid.
    arms: HashMap<u32, String>,
    /// Peers that ended at their crash point, by point.
    crashed_at: BTreeMap<String, u32>,
    deadline: Instant,
}

impl Peers {
    fn new(root: &Path, topic: &str) -> Peers {
        let dir = root.join(format!("logs-{topic}"));
        std::fs::create_dir_all(&dir).unwrap();
        Peers {
            dir,
            topic: topic.to_string(),
            next_generation: 1,
            running: Vec::new(),
            logs: Vec::new(),
            armed: Vec::new(),
            arms: HashMap::new(),
            crashed_at: BTreeMap::new(),
            deadline: Instant::now() + TEST_BUDGET,
        }
    }

    fn spawn(&mut self, role: &str, arm: Option<String>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let log = self
            .dir
            .join(format!("{}-{generation}", role.replace(':', "-")));
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(PEER_ENV, role)
            .env(LOG_ENV, &log)
            .env(GEN_ENV, generation.to_string())
            .env(TOPIC_ENV, &self.topic);
        if let Some(arm) = &arm {
            cmd.env(CRASH_ENV, arm);
        }
        let child = cmd.spawn().expect("spawn a peer");
        if let Some(arm) = arm {
            self.armed.push(child.id());
            let point = arm.split(':').next().unwrap_or_default().to_string();
            self.arms.insert(child.id(), point);
        }
        self.running.push((role.to_string(), child));
        self.logs.push((role.to_string(), log));
    }

    /// SIGKILLs running peer `index` (ours, by pid) and reaps it; returns
    /// its role.
    fn kill(&mut self, index: usize) -> String {
        let (role, mut child) = self.running.remove(index);
        child.kill().expect("SIGKILL a peer we started");
        let status = child.wait().expect("reap");
        assert_eq!(status.signal(), Some(9), "{role} ended by {status}");
        role
    }

    /// Reaps peers that ended on their own (at a crash point); returns
    /// their roles. A peer that ended any other way fails the test.
    fn reap_crashed(&mut self) -> Vec<String> {
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if let Some(status) = self.running[i].1.try_wait().unwrap() {
                let (role, child) = self.running.remove(i);
                if let Some(point) = self.arms.get(&child.id()) {
                    *self.crashed_at.entry(point.clone()).or_default() += 1;
                }
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "{role} ended by {status}, not at its crash point"
                );
                ended.push(role);
            } else {
                i += 1;
            }
        }
        ended
    }

    /// Indices of running peers not armed with a crash point.
    fn unarmed(&self) -> Vec<usize> {
        (0..self.running.len())
            .filter(|&i| !self.armed.contains(&self.running[i].1.id()))
            .collect()
    }

    /// Whether a running peer is armed with a crash point.
    fn armed_running(&self) -> bool {
        self.running
            .iter()
            .any(|(_, c)| self.armed.contains(&c.id()))
    }

    fn kill_all(&mut self) {
        while !self.running.is_empty() {
            self.kill(0);
        }
    }

    /// Every log line of peers whose role starts with `prefix`, by file.
    fn lines(&self, prefix: &str) -> Vec<Vec<String>> {
        self.logs
            .iter()
            .filter(|(role, _)| role.starts_with(prefix))
            .map(|(_, path)| {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    fn check_deadline(&self, what: &str) {
        assert!(Instant::now() < self.deadline, "{what} not done in time");
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small xorshift generator (the tests need no crate for this).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Parsed `A`/`D` lines (`TAG partition offset generation seq .`): `(partition, offset) -> (generation, seq)`; a line a SIGKILL cut short is skipped.
fn records(lines: &[String], tag: &str) -> Vec<((u32, u64), (u64, u64))> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // A line cut short by a SIGKILL mid-write lacks its final dot.
            if f.len() != 6 || f[0] != tag || f[5] != "." {
                return None;
            }
            Some((
                (f[1].parse().ok()?, f[2].parse().ok()?),
                (f[3].parse().ok()?, f[4].parse().ok()?),
            ))
        })
        .collect()
}

const GROUPS: [&str; 2] = ["ga", "gb"];

fn kills(root: &Path) {
    let topic = "kills";
    let mut topics = TopicManager::new();
    let options = TopicOptions {
        overflow: Overflow::Backpressure,
        group_retention: Duration::from_secs(120),
        ..TopicOptions::default()
    };
    topics
        .create_with(
            topic,
            TopicConfig {
                num_partitions: 4,
                partition_capacity: 128,
                partition_stride: 48,
            },
            options,
        )
        .unwrap();
    // Both groups hold producers back before the first send (the harness
    // stays a live member of each until the end).
    let mut holders: Vec<Consumer> = GROUPS
        .iter()
        .map(|g| {
            let mut c = Consumer::new(topic, g);
            c.assign(&[0]);
            c.seek(&topics, &MemOffsetStore::new(), SeekPolicy::Committed)
                .unwrap();
            c
        })
        .collect();
    let mut peers = Peers::new(root, topic);
    let roles = ["producer", "producer", "consumer:ga", "consumer:gb"];
    for role in roles {
        peers.spawn(role, None);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let points = [CrashPoint::TopicAfterClaim, CrashPoint::TopicMidWrite];
    let (mut kills, mut crashes, mut armed) = (0u32, 0u32, 0usize);
    while kills < 110 {
        peers.check_deadline("the kill loop");
        std::thread::sleep(Duration::from_millis(2 + rng.next(20)));
        for role in peers.reap_crashed() {
            crashes += 1;
            peers.spawn(&role, None);
        }
        // Armed producers are left to reach their crash points.
        let victims = peers.unarmed();
        let victim = victims[rng.next(victims.len() as u64) as usize];
        let role = peers.kill(victim);
        kills += 1;
        // Every eighth kill of a producer brings it back armed to die
        // inside an append, at each point in turn.
        let arm = (role == "producer" && kills % 8 == 0).then(|| {
            armed += 1;
            format!("{}:{}", points[armed % 2].name(), 1 + rng.next(300))
        });
        peers.spawn(&role, arm);
    }
    // Every point is hit at least once (arming more producers if the
    // random victims did not): then armed producers still running reach
    // their points, and producing stops.
    for point in points {
        while !peers.crashed_at.contains_key(point.name()) {
            peers.check_deadline("a death at each crash point");
            if !peers.armed_running() {
                let producer = peers
                    .running
                    .iter()
                    .position(|(r, _)| r == "producer")
                    .expect("a producer runs");
                peers.kill(producer);
                peers.spawn(
                    "producer",
                    Some(format!("{}:{}", point.name(), 1 + rng.next(50))),
                );
            }
            for role in peers.reap_crashed() {
                crashes += 1;
                peers.spawn(&role, None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    while peers.armed_running() {
        peers.check_deadline("armed producers' crashes");
        for role in peers.reap_crashed() {
            crashes += 1;
            if role != "producer" {
                peers.spawn(&role, None);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    while let Some(i) = peers.running.iter().position(|(r, _)| r == "producer") {
        peers.kill(i);
    }
    let acks = records(&peers.lines("producer").concat(), "A");
    let acked: BTreeMap<(u32, u64), (u64, u64)> = acks.iter().copied().collect();
    assert_eq!(
        acked.len(),
        acks.len(),
        "two sends acknowledged at one offset"
    );
    assert!(
        acked.len() > 1000,
        "only {} sends acknowledged",
        acked.len()
    );
    // Consumers drain what was acknowledged.
    for group in GROUPS {
        let prefix = format!("consumer:{group}");
        loop {
            peers.check_deadline("draining");
            let delivered: HashMap<(u32, u64), (u64, u64)> =
                records(&peers.lines(&prefix).concat(), "D")
                    .into_iter()
                    .collect();
            let missing = acked.keys().filter(|k| !delivered.contains_key(k)).count();
            if missing == 0 {
                for (at, rec) in &acked {
                    assert_eq!(
                        delivered[at], *rec,
                        "group {group} got another record at {at:?}"
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    peers.kill_all();
    for group in GROUPS {
        for lines in peers.lines(&format!("consumer:{group}")) {
            assert!(
                !lines.iter().any(|l| l.starts_with('T')),
                "torn record for {group}"
            );
            assert!(
                !lines.iter().any(|l| l.starts_with('L')),
                "{group} lagged under backpressure"
            );
            // In offset order within each consumer's life, per partition.
            let mut last: HashMap<u32, u64> = HashMap::new();
            for ((p, offset), _) in records(&lines, "D") {
                if let Some(prev) = last.insert(p, offset) {
                    assert!(
                        offset > prev,
                        "{group} partition {p}: {offset} after {prev}"
                    );
                }
            }
        }
    }
    // The last death's claim is repaired by the supervisor when it hears
    // of the death, or by a reader reaching it: wait for it.
    let total_holes = |topics: &TopicManager| -> u64 {
        let d = topics.describe(topic).unwrap();
        d.partitions.iter().map(|p| p.stats.holes).sum()
    };
    while total_holes(&topics) < u64::from(crashes) {
        peers.check_deadline("the repair of every claim left mid-append");
        std::thread::sleep(Duration::from_millis(10));
    }
    let described = topics.describe(topic).unwrap();
    let sum = |f: fn(&grafos_shm_layout::topic::PartitionStats) -> u64| -> u64 {
        described.partitions.iter().map(|p| f(&p.stats)).sum()
    };
    assert_eq!(
        sum(|s| s.lost),
        0,
        "a reader found a record overwritten under backpressure"
    );
    for point in points {
        assert!(
            peers.crashed_at.get(point.name()).is_some_and(|&n| n >= 1),
            "no producer died at {}: {:?}",
            point.name(),
            peers.crashed_at
        );
    }
    let holes = sum(|s| s.holes);
    assert!(
        sum(|s| s.tail_helps) >= 1,
        "no producer helped `tail` past another's claim"
    );
    assert!(
        holes >= u64::from(crashes),
        "{crashes} producers died mid-append, {holes} holes repaired"
    );
    println!(
        "  kills={kills} crash-point deaths={crashes} acknowledged={} holes={holes} repairs={}",
        acked.len(),
        described.repairs
    );
    holders.clear();
    topics.delete(topic).unwrap();
}

fn lapped(root: &Path) {
    let topic = "lapped";
    let mut topics = TopicManager::new();
    topics
        .create(
            topic,
            TopicConfig {
                num_partitions: 2,
                partition_capacity: 8,
                partition_stride: 1024,
            },
        )
        .unwrap();
    let mut peers = Peers::new(root, topic);
    peers.spawn("reader", None);
    peers.spawn("producer", None);
    peers.spawn("producer", None);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100 + rng.next(100)));
        for role in peers.reap_crashed() {
            peers.spawn(&role, None);
        }
        if let Some(i) = peers.running.iter().position(|(r, _)| r == "producer") {
            peers.kill(i);
            kills += 1;
            let arm = (kills % 3 == 0).then(|| format!("topic-mid-write:{}", 1 + rng.next(500)));
            peers.spawn("producer", arm);
        }
    }
    peers.kill_all();
    let lines = peers.lines("reader").concat();
    let read: u64 = lines
        .iter()
        .filter_map(|l| l.strip_prefix("R ")?.parse::<u64>().ok())
        .sum();
    let lagged = lines.iter().filter(|l| l.starts_with("L ")).count();
    assert!(
        lines.iter().all(|l| !l.starts_with('T')),
        "a torn record was returned"
    );
    assert!(
        lines.iter().all(|l| !l.starts_with('O')),
        "records out of order"
    );
    assert!(read > 100, "the reader read only {read} records");
    assert!(lagged > 0, "the reader was never lapped");
    println!("  read={read} lags={lagged} producer kills={kills}");
    topics.delete(topic).unwrap();
}

/// A small topic with one producer peer armed at a crash point; returns
/// the peer's exit status (waited for, within the test budget).
fn armed_producer(root: &Path, topic: &str, arm: &str) -> (TopicManager, std::process::ExitStatus) {
    let mut topics = TopicManager::new();
    topics
        .create(
            topic,
            TopicConfig {
                num_partitions: 1,
                partition_capacity: 64,
                partition_stride: 64,
            },
        )
        .unwrap();
    let mut peers = Peers::new(root, topic);
    peers.spawn("producer", Some(arm.to_string()));
    let (_, mut child) = peers.running.remove(0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peers.check_deadline("the armed producer's end");
        std::thread::sleep(Duration::from_millis(5));
    };
    (topics, status)
}

/// Waits until `topic` shows `holes` tombstones, nobody else touching it.
fn await_holes(topics: &TopicManager, topic: &str, holes: u64) {
    let deadline = Instant::now() + TEST_BUDGET;
    while topics.describe(topic).unwrap().partitions[0].stats.holes < holes {
        assert!(Instant::now() < deadline, "the claim was never repaired");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A producer killed between its claim and its publish: the supervisor,
/// told of the death, tombs the claim with no reader or producer around;
/// a reader then steps over the hole to the records after it.
fn supervisor_repairs(root: &Path) {
    let before = harness::counter("topic_claims_repaired");
    let (mut topics, status) = armed_producer(root, "dead-mid-append", "topic-after-claim:20");
    assert_eq!(
        status.signal(),
        Some(9),
        "the producer died at its crash point"
    );
    await_holes(&topics, "dead-mid-append", 1);
    assert!(harness::counter("topic_claims_repaired") > before);
    let mut producer = Producer::new("dead-mid-append");
    producer.send(&mut topics, b"after").unwrap();
    let mut consumer = Consumer::new("dead-mid-append", "g");
    consumer.assign(&[0]);
    consumer
        .seek(&topics, &MemOffsetStore::new(), SeekPolicy::Earliest)
        .unwrap();
    let got = consumer.poll(&topics, 100).unwrap();
    assert_eq!(got.len(), 20, "19 records before the hole, one after");
    assert_eq!(got[19].1.offset, 20, "the hole at offset 19 is skipped");
    assert_eq!(got[19].1.payload, b"after");
    drop(consumer);
    topics.delete("dead-mid-append").unwrap();
}

/// A producer stopped (SIGSTOP) mid-append holds its claim: past the
/// claim-age limit the supervisor kills it and the claim is repaired.
fn stuck_producer(root: &Path) {
    let killed = harness::counter("stuck_claimers_killed");
    let (topics, status) = armed_producer(root, "stopped-mid-append", "topic-mid-write:5:stop");
    assert_eq!(
        status.signal(),
        Some(9),
        "the supervisor SIGKILLed the stopped producer"
    );
    assert!(harness::counter("stuck_claimers_killed") > killed);
    await_holes(&topics, "stopped-mid-append", 1);
    let mut topics = topics;
    topics.delete("stopped-mid-append").unwrap();
}

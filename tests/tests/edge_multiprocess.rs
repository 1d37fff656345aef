//! Edge logs between real processes, with real SIGKILLs.
//!
//! The harness creates the log, starts `edge_peer` producer and consumer
//! processes, and checks the oracle file they share: every acknowledged
//! record arrives, in order, intact; a consumer killed between reading and
//! committing reads those records again.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use grafos_tests::Oracle;
use grafos_worker::edge::{EdgeConfig, EdgeLog};
use grafos_worker::segment::{Segment, SegmentName, list_segments};

const PEER: &str = env!("CARGO_BIN_EXE_edge_peer");
/// Indices of the peers in `Harness::children`.
const PRODUCER: usize = 0;
const CONSUMER: usize = 1;
/// Every test ends within this.
const TEST_BUDGET: Duration = Duration::from_secs(60);

/// One test's instance: its log, its oracle file, its cleanup.
struct Harness {
    instance: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Harness {
    fn new(tag: &str, capacity: u64) -> (Harness, Oracle) {
        let instance = format!("mp{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("grafos-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let name = SegmentName::new(&instance, "edge").unwrap();
        EdgeLog::create(
            &name,
            &EdgeConfig {
                capacity,
                ..EdgeConfig::default()
            },
        )
        .unwrap();
        let oracle = Oracle::open(&dir.join("oracle")).unwrap();
        (
            Harness {
                instance,
                dir,
                children: Vec::new(),
            },
            oracle,
        )
    }

    fn spawn(&self, role: &str) -> Child {
        Command::new(PEER)
            .args([
                role,
                &self.instance,
                "edge",
                self.dir.join("oracle").to_str().unwrap(),
            ])
            .spawn()
            .expect("spawn edge_peer")
    }

    fn leftovers(&self) -> Vec<String> {
        list_segments(&self.instance).unwrap()
    }

    /// Unlinks the log and asserts nothing of the instance is left (the
    /// peers have exited).
    fn finish(mut self) {
        self.children.clear();
        Segment::unlink(&SegmentName::new(&self.instance, "edge").unwrap()).unwrap();
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "segments left in /dev/shm"
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(name) = SegmentName::new(&self.instance, "edge") {
            let _ = Segment::unlink(&name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child` to exit successfully before `deadline`.
fn wait_success(child: &mut Child, deadline: Instant, what: &str) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not finish in time");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `ready()` or `deadline`, failing the test on timeout.
fn wait_until(deadline: Instant, what: &str, mut ready: impl FnMut() -> bool) {
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_million_checksummed_records_arrive_in_order() {
    let start = Instant::now();
    let deadline = start + TEST_BUDGET;
    let (mut harness, oracle) = Harness::new("million", 1 << 16);
    const N: u64 = 1_000_000;
    oracle.counters().limit.store(N, Ordering::Release);
    harness.children = vec![harness.spawn("produce"), harness.spawn("consume")];
    wait_success(&mut harness.children[PRODUCER], deadline, "producer");
    wait_success(&mut harness.children[CONSUMER], deadline, "consumer");
    let c = oracle.counters();
    assert_eq!(c.acked.load(Ordering::Acquire), N);
    assert_eq!(c.distinct.load(Ordering::Acquire), N);
    assert_eq!(c.violations.load(Ordering::Acquire), 0);
    assert_eq!(
        c.redeliveries.load(Ordering::Acquire),
        0,
        "no restart, so no redelivery"
    );
    assert!((0..N).all(|seq| oracle.seen(seq)));
    eprintln!("1,000,000 records in {:?}", start.elapsed());
    harness.finish();
}

/// A tiny xorshift for kill timing (reproducible from the printed seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_sigkills_lose_no_acknowledged_record() {
    const KILLS: u32 = 200;
    let start = Instant::now();
    let deadline = start + TEST_BUDGET;
    let (mut harness, oracle) = Harness::new("kills", 1 << 16);
    let c = oracle.counters();
    c.limit.store(u64::MAX, Ordering::Release);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    harness.children = vec![harness.spawn("produce"), harness.spawn("consume")];
    let (mut producer_kills, mut consumer_kills) = (0u32, 0u32);
    for _ in 0..KILLS {
        let kill_producer = rng.below(2) == 0;
        // Kill only a process that is working: it must have made progress
        // since it (re)started, so records are in flight when it dies.
        let progress = if kill_producer { &c.acked } else { &c.distinct };
        let before = progress.load(Ordering::Acquire);
        wait_until(deadline, "progress before a kill", || {
            progress.load(Ordering::Acquire) > before + 8
        });
        // Then a random moment within the next few milliseconds.
        let extra = Instant::now() + Duration::from_micros(rng.below(3000));
        wait_until(deadline, "kill moment", || Instant::now() >= extra);
        let (index, role) = if kill_producer {
            (PRODUCER, "produce")
        } else {
            (CONSUMER, "consume")
        };
        let victim = &mut harness.children[index];
        assert!(
            victim.try_wait().unwrap().is_none(),
            "a peer exited on its own"
        );
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        harness.children[index] = harness.spawn(role);
        if kill_producer {
            producer_kills += 1;
        } else {
            consumer_kills += 1;
        }
    }
    // Let the stream end a little after what was acknowledged so far.
    let limit = c.acked.load(Ordering::Acquire) + 2_000;
    c.limit.store(limit, Ordering::Release);
    wait_success(&mut harness.children[PRODUCER], deadline, "producer");
    wait_success(&mut harness.children[CONSUMER], deadline, "consumer");

    let acked = c.acked.load(Ordering::Acquire);
    assert_eq!(acked, limit);
    let missing = (0..acked).filter(|&seq| !oracle.seen(seq)).count();
    assert_eq!(missing, 0, "acknowledged records lost");
    assert_eq!(c.violations.load(Ordering::Acquire), 0);
    let redelivered = c.redeliveries.load(Ordering::Acquire);
    assert!(
        redelivered > 0,
        "killed consumers never re-read uncommitted records"
    );
    assert_eq!(
        c.producer_starts.load(Ordering::Acquire),
        u64::from(producer_kills) + 1
    );
    assert_eq!(
        c.consumer_starts.load(Ordering::Acquire),
        u64::from(consumer_kills) + 1
    );
    eprintln!(
        "{acked} records, {producer_kills} producer kills, {consumer_kills} consumer kills, \
         {redelivered} redelivered, {} sent twice, in {:?}",
        c.producer_duplicates.load(Ordering::Acquire),
        start.elapsed()
    );
    harness.finish();
}

//! FabricQueues between real processes, with real SIGKILLs and SIGSTOPs.
//!
//! The harness creates the queue, starts `queue_peer` producers and
//! consumers, and checks the oracle file they share: every acknowledged
//! record is popped exactly once, except records taken by a consumer that
//! died holding them, which the queue's repair counts (`reads_repaired`).
//! Crash points kill (or stop) peers inside the narrow windows of the
//! algorithm, and the queue's counters prove the repair paths ran.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use grafos_shm_layout::crash::CrashPoint;
use grafos_tests::Oracle;
use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::segment::{Segment, SegmentName, list_segments};

const PEER: &str = env!("CARGO_BIN_EXE_queue_peer");
/// Every test ends within this.
const TEST_BUDGET: Duration = Duration::from_secs(60);

/// One test's instance: its queue, its oracle file, its peers, its cleanup.
struct Harness {
    instance: String,
    dir: PathBuf,
    /// The harness's own handle (for counters and the final repair).
    queue: Option<FabricQueue>,
    /// Long-running peers: (role, process).
    peers: Vec<(&'static str, Child)>,
    deadline: Instant,
}

impl Harness {
    fn new(tag: &str, capacity: u64) -> (Harness, Oracle) {
        let instance = format!("mq{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("grafos-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let name = SegmentName::new(&instance, "queue").unwrap();
        let queue = FabricQueue::create(&name, &QueueConfig::new(capacity, 256)).unwrap();
        let oracle = Oracle::open(&dir.join("oracle")).unwrap();
        let harness = Harness {
            instance,
            dir,
            queue: Some(queue),
            peers: Vec::new(),
            deadline: Instant::now() + TEST_BUDGET,
        };
        (harness, oracle)
    }

    fn queue(&self) -> &FabricQueue {
        self.queue.as_ref().expect("open until finish")
    }

    fn spawn(&self, role: &str, extra: &[String]) -> Child {
        Command::new(PEER)
            .args([
                role,
                &self.instance,
                "queue",
                self.dir.join("oracle").to_str().unwrap(),
            ])
            .args(extra)
            .spawn()
            .expect("spawn queue_peer")
    }

    fn start(&mut self, role: &'static str) {
        let child = self.spawn(role, &[]);
        self.peers.push((role, child));
    }

    /// Waits until `ready()`, failing the test past the deadline.
    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) {
        while !ready() {
            assert!(
                Instant::now() < self.deadline,
                "timed out waiting for {what}; queue {:?}, {:?}",
                self.queue().positions(),
                self.queue().counters()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for `child` to exit; returns its status.
    fn reap(&self, child: &mut Child, what: &str) -> std::process::ExitStatus {
        let mut status = None;
        self.wait_until(what, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// Ends an unlimited stream: producers take no seq past those handed
    /// out so far.
    fn stop_producers(&self, oracle: &Oracle) {
        let c = oracle.counters();
        c.limit
            .store(c.next_seq.load(Ordering::Acquire), Ordering::Release);
    }

    /// Waits for the producers to exit, then for the consumers to drain
    /// and exit; then repairs every dead participant.
    fn drain(&mut self, oracle: &Oracle) {
        let c = oracle.counters();
        let mut peers = std::mem::take(&mut self.peers);
        for (role, child) in peers.iter_mut().filter(|p| p.0 == "produce") {
            let status = self.reap(child, "a producer to finish");
            assert!(status.success(), "{role} exited with {status}");
        }
        c.producers_done.store(1, Ordering::Release);
        for (role, child) in peers.iter_mut().filter(|p| p.0 == "consume") {
            let status = self.reap(child, "a consumer to drain");
            assert!(status.success(), "{role} exited with {status}");
        }
        // Reads of dead consumers that no producer lapped are still held.
        self.queue().repair_dead().unwrap();
        let p = self.queue().positions();
        assert_eq!(
            p.head, p.tail,
            "records left in the queue, or head past tail"
        );
        // And the queue still works.
        self.queue().try_push(b"after the drain").unwrap();
        assert_eq!(self.queue().try_pop().unwrap().unwrap(), b"after the drain");
    }

    /// Checks the oracle: no acknowledged record lost except those counted
    /// as taken by a dead consumer, none popped twice, none damaged.
    /// Returns (acknowledged, missing).
    fn check_delivery(&self, oracle: &Oracle) -> (u64, u64) {
        let c = oracle.counters();
        let issued = c
            .next_seq
            .load(Ordering::Acquire)
            .min(c.limit.load(Ordering::Acquire));
        let (mut acked, mut missing) = (0, 0);
        for seq in 0..issued {
            if oracle.acked(seq) {
                acked += 1;
                if !oracle.seen(seq) {
                    missing += 1;
                }
            }
        }
        assert_eq!(
            c.duplicates.load(Ordering::Acquire),
            0,
            "records popped twice"
        );
        assert_eq!(c.violations.load(Ordering::Acquire), 0, "damaged records");
        // A consumer killed holding a record loses it (its slot is a
        // repaired read) unless it had marked it seen first.
        let seen_in_dead_hands = (0..c.consumer_starts.load(Ordering::Acquire))
            .filter_map(|i| oracle.in_hand(i))
            .filter(|&seq| oracle.seen(seq))
            .count() as u64;
        let lost_with_reader = self.queue().counters().reads_repaired - seen_in_dead_hands;
        assert!(
            missing <= lost_with_reader,
            "{missing} acknowledged records lost, only {lost_with_reader} \
             were taken by consumers that died before seeing them"
        );
        (acked, missing)
    }

    /// Unlinks the queue and asserts nothing of the instance is left.
    fn finish(mut self) {
        self.queue = None;
        Segment::unlink(&SegmentName::new(&self.instance, "queue").unwrap()).unwrap();
        assert_eq!(
            list_segments(&self.instance).unwrap(),
            Vec::<String>::new(),
            "segments left in /dev/shm"
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (_, child) in &mut self.peers {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(name) = SegmentName::new(&self.instance, "queue") {
            let _ = Segment::unlink(&name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tiny xorshift (reproducible from the printed seed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("schedule seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The state letter of `/proc/PID/stat` (`T` when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal a peer");
}

#[test]
fn records_cross_processes_exactly_once() {
    const N: u64 = 400_000;
    let start = Instant::now();
    let (mut h, oracle) = Harness::new("once", 256);
    oracle.counters().limit.store(N, Ordering::Release);
    for role in ["produce", "produce", "consume", "consume"] {
        h.start(role);
    }
    h.drain(&oracle);
    let (acked, missing) = h.check_delivery(&oracle);
    assert_eq!(acked, N);
    assert_eq!(missing, 0);
    assert_eq!(h.queue().counters().reads_repaired, 0);
    eprintln!(
        "{N} records, 2 producers, 2 consumers, in {:?}",
        start.elapsed()
    );
    h.finish();
}

/// Kills peers exactly inside each window of the algorithm, 20 times each,
/// and stops producers between their slot claim and their `tail` advance
/// 20 times, while a steady producer and consumer keep the queue moving.
#[test]
fn crash_points_are_repaired_and_helped_past() {
    const PER_WINDOW: u64 = 20;
    let start = Instant::now();
    let (mut h, oracle) = Harness::new("crash", 16);
    let mut rng = Rng::seeded();
    let c = oracle.counters();
    c.limit.store(u64::MAX, Ordering::Release);
    h.start("produce");
    h.start("consume");
    let windows = [
        ("produce", CrashPoint::AfterSlotClaim),
        ("produce", CrashPoint::AfterTailAdvance),
        ("consume", CrashPoint::AfterReadClaim),
        ("consume", CrashPoint::MidCopy),
    ];
    for (role, point) in windows {
        for _ in 0..PER_WINDOW {
            let hits = oracle.counters().crash_hits.load(Ordering::Acquire);
            let arm = format!("{}:{}", point.name(), 1 + rng.below(20));
            let mut victim = h.spawn(role, &["--crash".into(), arm]);
            let status = h.reap(&mut victim, "an armed peer to reach its crash point");
            assert_eq!(status.signal(), Some(9), "{role} at {point:?}: {status}");
            assert_eq!(
                c.crash_hits.load(Ordering::Acquire),
                hits + 1,
                "the peer died elsewhere than at {point:?}"
            );
        }
    }
    // Stopped between the slot CAS and the tail CAS: others help past it,
    // and it publishes after SIGCONT.
    for _ in 0..PER_WINDOW {
        let arm = format!("after-slot-claim:{}", 1 + rng.below(20));
        let helps = h.queue().counters().tail_helps;
        let mut victim = h.spawn(
            "produce",
            &["--stop".into(), arm, "--records".into(), "40".into()],
        );
        h.wait_until("the armed producer to stop", || {
            process_state(victim.id()) == Some('T')
        });
        // Consumers wait at the stopped claim (its owner is alive), while
        // producers help `tail` past it until the queue is full behind it.
        h.wait_until("producers to help past the stopped claim", || {
            h.queue().counters().tail_helps > helps && h.queue().depth() == h.queue().capacity()
        });
        signal(&victim, rustix::process::Signal::CONT);
        let status = h.reap(&mut victim, "the resumed producer to finish");
        assert!(status.success(), "resumed producer exited with {status}");
    }
    h.stop_producers(&oracle);
    h.drain(&oracle);
    let (acked, missing) = h.check_delivery(&oracle);

    let q = h.queue().counters();
    assert_eq!(
        c.crash_hits.load(Ordering::Acquire),
        5 * PER_WINDOW,
        "every armed peer reached its point"
    );
    // Each producer killed in a window held exactly one unpublished claim,
    // each consumer exactly one unfinished read.
    assert_eq!(q.claims_repaired, 2 * PER_WINDOW);
    assert_eq!(q.reads_repaired, 2 * PER_WINDOW);
    assert_eq!(
        missing, q.reads_repaired,
        "each consumer killed in a window lost exactly the record it held"
    );
    assert_eq!(
        q.tombs_skipped, q.claims_repaired,
        "every tombstone skipped"
    );
    assert!(q.tail_helps >= PER_WINDOW, "tail helps: {}", q.tail_helps);
    assert!(
        q.head_helps > 0,
        "no consumer helped head past a dead reader"
    );
    assert_eq!(q.late_publishes, 0, "a live claimant was repaired");
    eprintln!(
        "{acked} acknowledged, {missing} lost with their reader; counters {q:?}; in {:?}",
        start.elapsed()
    );
    h.finish();
}

#[test]
fn random_sigkills_of_producers_and_consumers() {
    const KILLS: u32 = 200;
    let start = Instant::now();
    let (mut h, oracle) = Harness::new("kills", 64);
    let mut rng = Rng::seeded();
    let c = oracle.counters();
    c.limit.store(u64::MAX, Ordering::Release);
    for role in ["produce", "produce", "consume", "consume"] {
        h.start(role);
    }
    let mut kills = [0u32; 2];
    for _ in 0..KILLS {
        // Kill only while records flow, at a random moment.
        let before = c.distinct.load(Ordering::Acquire);
        h.wait_until("progress before a kill", || {
            c.distinct.load(Ordering::Acquire) > before + 8
        });
        let moment = Instant::now() + Duration::from_micros(rng.below(2000));
        h.wait_until("the kill moment", || Instant::now() >= moment);
        let index = rng.below(h.peers.len() as u64) as usize;
        let role = h.peers[index].0;
        let victim = &mut h.peers[index].1;
        assert!(
            victim.try_wait().unwrap().is_none(),
            "a peer exited on its own"
        );
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        h.peers[index].1 = h.spawn(role, &[]);
        kills[usize::from(role == "consume")] += 1;
    }
    h.stop_producers(&oracle);
    h.drain(&oracle);
    let (acked, missing) = h.check_delivery(&oracle);
    let q = h.queue().counters();
    assert!(
        q.reads_repaired <= u64::from(kills[1]),
        "more reads repaired than consumers killed"
    );
    assert!(
        q.claims_repaired <= u64::from(kills[0]),
        "more claims repaired than producers killed"
    );
    eprintln!(
        "{acked} acknowledged, {missing} lost with their reader, {} producer and {} consumer \
         kills; counters {q:?}; in {:?}",
        kills[0],
        kills[1],
        start.elapsed()
    );
    h.finish();
}

/// The only producer dies between its slot claim and its `tail` advance;
/// the waiting consumer repairs the claim and skips it before anyone moved
/// `tail` past it. A new producer must get past that position.
#[test]
fn a_fresh_producer_gets_past_a_lone_dead_claimer() {
    let (mut h, oracle) = Harness::new("lone", 4);
    oracle.counters().limit.store(u64::MAX, Ordering::Release);
    h.start("consume");
    for round in 1..=5u64 {
        let arm = format!("after-slot-claim:{round}");
        let mut victim = h.spawn("produce", &["--crash".into(), arm]);
        let status = h.reap(&mut victim, "the lone producer to die at its claim");
        assert_eq!(status.signal(), Some(9), "{status}");
        h.wait_until("the waiting consumer to repair the dead claim", || {
            h.queue().counters().claims_repaired >= round
        });
        let mut fresh = h.spawn("produce", &["--records".into(), "8".into()]);
        let status = h.reap(&mut fresh, "a fresh producer to push past it");
        assert!(status.success(), "fresh producer exited with {status}");
    }
    h.stop_producers(&oracle);
    h.drain(&oracle);
    let (_, missing) = h.check_delivery(&oracle);
    assert_eq!(missing, 0);
    assert_eq!(h.queue().counters().claims_repaired, 5);
    h.finish();
}

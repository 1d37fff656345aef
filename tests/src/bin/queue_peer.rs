//! A producer or consumer process for the FabricQueue multi-process tests.
//!
//! `queue_peer produce|consume INSTANCE QUEUE ORACLE [--records N]
//! [--crash POINT:HIT | --stop POINT:HIT]`
//!
//! Producers take seqs from the oracle's shared counter and push
//! checksummed records, marking each acknowledged only after its push
//! returned Ok. Consumers pop records in place, check their checksums,
//! copy them out, note them in hand and mark them seen *before* releasing
//! the slot, so a record lost with a killed consumer is one the queue's
//! repair counted, and a record seen by a consumer killed before its
//! release is known.
//!
//! `--crash POINT:HIT` SIGKILLs the process the HIT-th time it reaches the
//! crash point named POINT (`after-slot-claim`, `after-tail-advance`,
//! `after-read-claim`, `mid-copy`); `--stop` SIGSTOPs it there instead.
//! `--records N` exits after N records.

use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use grafos_shm_layout::crash::{self, CrashPoint};
use grafos_tests::{MAX_RECORDS, Oracle, decode, encode};
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::layout::queue::QueueError;
use grafos_worker::segment::SegmentName;

/// Where this process kills or stops itself.
struct Arm {
    point: CrashPoint,
    hit: u64,
    stop: bool,
}

static ARM: OnceLock<Arm> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);
static ORACLE: OnceLock<Oracle> = OnceLock::new();

fn crash_hook(at: CrashPoint) {
    let Some(arm) = ARM.get() else { return };
    if at != arm.point || HITS.fetch_add(1, Ordering::Relaxed) + 1 != arm.hit {
        return;
    }
    if let Some(oracle) = ORACLE.get() {
        oracle.counters().crash_hits.fetch_add(1, Ordering::SeqCst);
    }
    use rustix::process::{Signal, getpid, kill_process};
    let signal = if arm.stop { Signal::STOP } else { Signal::KILL };
    kill_process(getpid(), signal).expect("signal self");
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: queue_peer produce|consume INSTANCE QUEUE ORACLE_FILE \
         [--records N] [--crash POINT:HIT | --stop POINT:HIT]"
    );
    ExitCode::from(2)
}

fn parse_arm(value: &str, stop: bool) -> Option<Arm> {
    let (point, hit) = value.split_once(':')?;
    Some(Arm {
        point: CrashPoint::from_name(point)?,
        hit: hit.parse().ok().filter(|&h| h > 0)?,
        stop,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return usage();
    }
    let mut budget = u64::MAX;
    let mut rest = args[5..].iter();
    while let Some(flag) = rest.next() {
        let Some(value) = rest.next() else {
            return usage();
        };
        match flag.as_str() {
            "--records" => match value.parse() {
                Ok(n) => budget = n,
                Err(_) => return usage(),
            },
            "--crash" | "--stop" => match parse_arm(value, flag == "--stop") {
                Some(arm) => {
                    let _ = ARM.set(arm);
                    crash::set_hook(crash_hook);
                }
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    // Die with the harness: a killed test must not leave peers spinning.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("prctl(PR_SET_PDEATHSIG)");
    let name = SegmentName::new(&args[2], &args[3]).expect("valid names");
    let oracle = ORACLE.get_or_init(|| Oracle::open(Path::new(&args[4])).expect("oracle file"));
    let queue = FabricQueue::open(&name).expect("queue exists");
    match args[1].as_str() {
        "produce" => produce(&queue, oracle, budget),
        "consume" => consume(&queue, oracle, budget),
        _ => usage(),
    }
}

fn produce(queue: &FabricQueue, oracle: &Oracle, budget: u64) -> ExitCode {
    let counters = oracle.counters();
    counters.producer_starts.fetch_add(1, Ordering::Relaxed);
    let mut buf = Vec::new();
    for _ in 0..budget {
        let limit = counters.limit.load(Ordering::Acquire).min(MAX_RECORDS);
        let seq = counters.next_seq.fetch_add(1, Ordering::AcqRel);
        if seq >= limit {
            break;
        }
        encode(seq, &mut buf);
        match queue.push(&buf, Some(Duration::from_secs(30))) {
            // Acknowledged only now, after the push returned Ok.
            Ok(_) => oracle.mark_acked(seq),
            Err(e) => {
                eprintln!("push of {seq} failed: {e}");
                return ExitCode::from(4);
            }
        }
    }
    ExitCode::SUCCESS
}

fn consume(queue: &FabricQueue, oracle: &Oracle, budget: u64) -> ExitCode {
    let counters = oracle.counters();
    let me = counters.consumer_starts.fetch_add(1, Ordering::AcqRel);
    let mut taken = 0;
    while taken < budget {
        if counters.producers_done.load(Ordering::Acquire) != 0 && queue.depth() == 0 {
            break;
        }
        let guard = match queue.pop_ref(Some(Duration::from_millis(50))) {
            Ok(guard) => guard,
            Err(QueueError::TimedOut) => continue,
            Err(e) => {
                eprintln!("pop failed: {e}");
                return ExitCode::from(4);
            }
        };
        // Copy out (the mid-copy crash point), check, mark seen, and only
        // then release the slot.
        let record = guard.to_vec();
        let Some(seq) = decode(&record) else {
            counters.violations.fetch_add(1, Ordering::Relaxed);
            eprintln!("damaged record at position {}", guard.position());
            return ExitCode::from(3);
        };
        // Noted in hand while it is marked seen, before the slot is
        // released: a kill in that window leaves the seq here for the
        // harness (a seen record whose slot is a repaired read).
        oracle.set_in_hand(me, Some(seq));
        if oracle.mark_seen(seq) {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.distinct.fetch_add(1, Ordering::AcqRel);
        }
        oracle.set_in_hand(me, None);
        if let Err(e) = guard.finish() {
            eprintln!("release of {seq} failed: {e}");
            return ExitCode::from(4);
        }
        taken += 1;
    }
    ExitCode::SUCCESS
}

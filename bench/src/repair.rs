//! Death to repair: a participant holding an unpublished FabricQueue claim
//! is SIGKILLed, and the clock runs until the supervisor has noticed the
//! death (its pidfd) and tombed the claim.
//!
//! The supervisor is the library `grafos up` runs, serving on a thread of
//! this process; each claimer is a child process (this binary).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::participant::attach;
use grafos_worker::segment::SegmentName;

use crate::local::LocalInstance;
use crate::{percentile, self_exe};

/// Child role: attach to `instance`, claim a slot of its queue `jobs`
/// and never publish it; say `ready`, then wait to be killed.
pub(crate) fn claimer(instance: &str) {
    attach(instance).expect("attach");
    let name = SegmentName::new(instance, "jobs").expect("name");
    let queue = FabricQueue::open(&name).expect("open queue");
    std::mem::forget(queue.try_reserve(8).expect("claim"));
    println!("ready");
    loop {
        std::thread::park();
    }
}

pub(crate) fn repair_table(kills: usize) {
    let local = LocalInstance::start("repair");
    let (instance, root) = (local.instance.clone(), local.root.clone());
    let name = SegmentName::new(&instance, "jobs").expect("name");
    let queue = FabricQueue::create(&name, &QueueConfig::new(1024, 64)).expect("queue");
    let mut times = Vec::with_capacity(kills);
    for i in 0..kills {
        let mut child = self_exe()
            .args(["child", "claimer", &instance])
            .env("GRAFOS_RUNTIME_DIR", &root)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn claimer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("claimer says ready");
        assert_eq!(line.trim(), "ready", "claimer {i}");
        let before = queue.counters().claims_repaired;
        let killed = Instant::now();
        child.kill().expect("SIGKILL the claimer");
        while queue.counters().claims_repaired == before {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "kill {i} never repaired"
            );
            std::thread::yield_now();
        }
        times.push(killed.elapsed().as_micros() as u64);
        child.wait().expect("reap");
        // Skip the tombstone, so the queue never fills.
        assert!(queue.try_pop().expect("pop").is_none());
        if (i + 1) % 50 == 0 {
            eprintln!("  {} of {kills} kills", i + 1);
        }
    }
    drop(queue);
    local.stop();
    times.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!("## Death to repair (SIGKILL of a claim holder -> claim tombed by the supervisor)\n");
    println!("| kills | p50 | p90 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {kills} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.90)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("at least one kill")),
    );
}

//! Relocation and rebinding of a relocatable edge, and the steady
//! throughput of a four-stage pipeline.
//!
//! The relocation row: this process produces into an edge, a child
//! process (this binary) consumes it, sleeping in `pop` between records.
//! Each round the producer pushes a record, then relocates the edge
//! (seal, fresh lease, carry, publish: timed as "relocate") and pushes a
//! record stamped with the time `relocate` returned. The consumer, woken
//! by the seal, reads the old log to its end, waits for the new
//! generation and rebinds; it reports how long the rebind itself took
//! (opening the new lease and mapping it: `EdgeStats::rebind_ns`) and how
//! long after the stamp it popped the record from the new segment. Times
//! come from `CLOCK_MONOTONIC`, which both processes share.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use grafos_worker::pipeline::RelocatableQueueEdge;
use grafos_worker::stream::Pipeline;

use crate::local::LocalInstance;
use crate::{percentile, self_exe};

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Child role: pops `rounds` pairs of records from the edge whose
/// handoff record is on block lease `handoff`; prints the rebind time of
/// each stamped record in nanoseconds.
pub(crate) fn consumer(instance: &str, handoff: u64, rounds: u64) {
    let mut edge: RelocatableQueueEdge =
        RelocatableQueueEdge::open_by_id(instance, handoff).expect("open the edge");
    println!("ready");
    for _ in 0..rounds {
        // The warm record may be popped from the old segment or, carried,
        // from the new one: the rebind falls in either pop.
        let before = edge.stats();
        let warm = edge.pop().expect("pop before the move");
        assert_eq!(warm, b"warm");
        let stamped = edge.pop().expect("pop after the move");
        let now = now_ns();
        let stamp = u64::from_le_bytes(stamped.try_into().expect("an 8-byte stamp"));
        edge.commit().expect("commit");
        let after = edge.stats();
        assert_eq!(after.rebinds, before.rebinds + 1, "one rebind per move");
        println!("{} {}", after.rebind_ns - before.rebind_ns, now - stamp);
    }
    edge.release().expect("release");
}

pub(crate) fn rebind_table(rounds: u64) {
    let local = LocalInstance::start("rebind");
    let mut edge: RelocatableQueueEdge =
        RelocatableQueueEdge::create(&local.instance, 64 << 10, 300, 1).expect("edge");
    let mut child = self_exe()
        .args([
            "child",
            "rebind-consumer",
            &local.instance,
            &edge.handoff_lease_id().to_string(),
            &rounds.to_string(),
        ])
        .env("GRAFOS_RUNTIME_DIR", &local.root)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the consumer");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = lines.next().expect("a line").expect("readable");
    assert_eq!(ready, "ready");
    let mut relocate = Vec::new();
    let mut rebind = Vec::new();
    let mut delivered = Vec::new();
    for i in 0..rounds {
        edge.push(&b"warm".to_vec()).expect("push");
        let start = now_ns();
        edge.relocate().expect("relocate");
        let moved = now_ns();
        relocate.push((moved - start) / 1000);
        edge.push(&moved.to_le_bytes().to_vec())
            .expect("push after the move");
        let line = lines.next().expect("a rebind time").expect("readable");
        let mut times = line
            .split(' ')
            .map(|t| t.parse::<u64>().expect("nanoseconds") / 1000);
        rebind.push(times.next().expect("rebind"));
        delivered.push(times.next().expect("delivery"));
        if (i + 1) % 50 == 0 {
            eprintln!("  {} of {rounds} relocations", i + 1);
        }
    }
    assert!(child.wait().expect("reap").success(), "the consumer failed");
    assert_eq!(edge.generation().value(), rounds + 1);
    edge.release().expect("release");

    let throughput = pipeline_throughput(1_000_000);
    local.stop();

    relocate.sort_unstable();
    rebind.sort_unstable();
    delivered.sort_unstable();
    println!(
        "## Relocation and downstream rebind (edge of 64 KiB, consumer in another process, asleep in pop)\n"
    );
    println!("| relocations | step | p50 | p90 | p99 | max |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (name, times) in [
        ("relocate (seal, lease, carry, publish)", &relocate),
        ("downstream rebind (open + map the new segment)", &rebind),
        (
            "relocate returned -> next record popped downstream",
            &delivered,
        ),
    ] {
        println!(
            "| {rounds} | {name} | {} us | {} us | {} us | {} us |",
            percentile(times, 0.50),
            percentile(times, 0.90),
            percentile(times, 0.99),
            times.last().expect("at least one round"),
        );
    }
    println!("\n## Four-stage pipeline (threads, relocatable edges between stages)\n");
    println!("| items | items/s |");
    println!("|---:|---:|");
    println!("| {} | {:.2} M/s |\n", throughput.0, throughput.1 / 1e6);
}

/// Items per second through source -> map -> map -> sink, as threads.
/// (`LocalInstance::start` named the instance in the environment.)
fn pipeline_throughput(items: u64) -> (u64, f64) {
    let started = Instant::now();
    let report = Pipeline::from_source((0..items).map(|i| i.to_le_bytes().to_vec()))
        .map(|mut v: Vec<u8>| {
            v.push(1);
            v
        })
        .map(|mut v: Vec<u8>| {
            v.push(2);
            v
        })
        .sink(|v: Vec<u8>| {
            assert_eq!(v.len(), 10);
            Ok(())
        })
        .run()
        .expect("the pipeline runs");
    assert_eq!(report.sunk, items);
    (items, items as f64 / started.elapsed().as_secs_f64())
}

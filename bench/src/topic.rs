//! Topic rows: append and poll throughput of a one-partition topic for
//! 64 B and 512 B records, with 1 and 2 producer processes, beside a
//! FabricQueue carrying the same records between the same processes.
//!
//! * append only: producers append to an overwriting topic nobody reads
//!   (the bare cost of an append, two producers contending for `tail`);
//! * append -> poll: producers append to a backpressure topic whose one
//!   consumer group (this process) polls batches of up to 1024 records
//!   and commits each batch; the rate is records polled per second; with
//!   `poll` (a `Vec` per record) and with `poll_with` (each record handed
//!   over in one reused buffer);
//! * FabricQueue push -> pop: the same producers push to a FabricQueue of
//!   as many slots, this process pops.
//!
//! Every side blocks (futex) rather than spins when it cannot go on, so
//! the two-producer rows (three processes on two CPUs) do not spin
//! against each other. Producers start together at an agreed instant.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
use grafos_worker::mq::offset::MemOffsetStore;
use grafos_worker::mq::topic::{Overflow, TopicConfig, TopicManager, TopicOptions};
use grafos_worker::segment::SegmentName;

use crate::local::LocalInstance;
use crate::mpmc::slots_for;
use crate::store::unix_ns;
use crate::{Unlink, instance_of_parent, median, object_of, pin, self_exe, unique_segment};

/// Record sizes of the topic rows.
const SIZES: [usize; 2] = [64, 512];

fn wait_until(start_ns: u64) {
    while unix_ns() < start_ns {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Child role `topic-append TOPIC N SIZE CPU START_NS`: appends N records
/// to partition 0 from START_NS; prints the nanoseconds it took.
pub(crate) fn append(args: &[String]) {
    let num = |i: usize| args[i].parse::<u64>().expect("number");
    let (n, size, cpu, start) = (num(1), num(2) as usize, num(3), num(4));
    pin(cpu as usize);
    let topics = TopicManager::new();
    let topic = topics.open(&args[0]).expect("open the topic");
    let record = vec![7u8; size];
    wait_until(start);
    let began = Instant::now();
    for _ in 0..n {
        topic.append(0, &record, None).expect("append");
    }
    println!("{}", began.elapsed().as_nanos());
}

/// Child role `queue-push OBJECT N SIZE CPU START_NS`: pushes N records
/// to the parent's FabricQueue from START_NS.
pub(crate) fn push(args: &[String]) {
    let num = |i: usize| args[i].parse::<u64>().expect("number");
    let (n, size, cpu, start) = (num(1), num(2) as usize, num(3), num(4));
    pin(cpu as usize);
    let name = SegmentName::new(&instance_of_parent(), &args[0]).unwrap();
    let queue = FabricQueue::open(&name).expect("open the queue");
    let record = vec![7u8; size];
    wait_until(start);
    let began = Instant::now();
    for _ in 0..n {
        queue.push(&record, None).expect("push");
    }
    println!("{}", began.elapsed().as_nanos());
}

/// Starts `producers` children of `role` on `target`, each sending its
/// share of `n` records of `size` bytes, pinned to CPUs 0 and 1 in turn;
/// returns them and the agreed start.
fn start_producers(
    role: &str,
    target: &str,
    producers: u64,
    n: u64,
    size: usize,
) -> (Vec<Child>, u64) {
    let start = unix_ns() + 200_000_000;
    let children = (0..producers)
        .map(|p| {
            self_exe()
                .args([
                    "child",
                    role,
                    target,
                    &(n / producers).to_string(),
                    &size.to_string(),
                    &(p % 2).to_string(),
                    &start.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a producer")
        })
        .collect();
    (children, start)
}

/// Waits for producers; the slowest one's nanoseconds.
fn slowest(children: Vec<Child>) -> u64 {
    children
        .into_iter()
        .map(|mut child| {
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(child.wait().unwrap().success(), "producer failed");
            line.trim().parse::<u64>().expect("elapsed ns")
        })
        .max()
        .unwrap_or(1)
}

/// Pins this process (the consumer) to CPU 1 beside one producer on CPU
/// 0, or lets it run on either CPU beside two producers on both.
fn pin_consumer(producers: u64) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(1);
    if producers > 1 {
        set.set(0);
    }
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

fn config(size: usize) -> TopicConfig {
    TopicConfig {
        num_partitions: 1,
        partition_capacity: slots_for(size),
        partition_stride: size as u64,
    }
}

/// Appends per second of `producers` processes to an overwriting topic.
fn append_only(topics: &mut TopicManager, name: &str, size: usize, producers: u64, n: u64) -> f64 {
    topics.create(name, config(size)).unwrap();
    let (children, _) = start_producers("topic-append", name, producers, n, size);
    let ns = slowest(children);
    topics.delete(name).unwrap();
    (n / producers * producers) as f64 / (ns as f64 / 1e9)
}

/// Records polled per second from a backpressure topic fed by
/// `producers` processes, through `poll` (a `Vec` per record) or, with
/// `borrowed`, `poll_with` (one reused buffer).
fn append_poll(
    topics: &mut TopicManager,
    name: &str,
    size: usize,
    producers: u64,
    n: u64,
    borrowed: bool,
) -> f64 {
    let options = TopicOptions {
        overflow: Overflow::Backpressure,
        ..TopicOptions::default()
    };
    topics.create_with(name, config(size), options).unwrap();
    let total = n / producers * producers;
    let mut offsets = MemOffsetStore::new();
    let mut consumer = Consumer::new(name, "bench");
    consumer.assign(&[0]);
    consumer
        .seek(topics, &offsets, SeekPolicy::Earliest)
        .unwrap();
    let (children, start) = start_producers("topic-append", name, producers, n, size);
    pin_consumer(producers);
    let mut got = 0;
    let mut bytes = 0;
    while got < total {
        let polled = if borrowed {
            consumer
                .poll_with_timeout(topics, 1024, Duration::from_secs(10), |_, _, payload| {
                    bytes += payload.len()
                })
                .expect("poll")
        } else {
            let batch = consumer
                .poll_timeout(topics, 1024, Duration::from_secs(10))
                .expect("poll");
            bytes += batch.iter().map(|(_, m)| m.payload.len()).sum::<usize>();
            batch.len()
        };
        assert!(polled > 0, "producers stalled");
        got += polled as u64;
        consumer.commit(&mut offsets);
    }
    let elapsed = unix_ns() - start;
    slowest(children);
    assert_eq!(bytes, total as usize * size);
    drop(consumer);
    topics.delete(name).unwrap();
    total as f64 / (elapsed as f64 / 1e9)
}

/// Records popped per second from a FabricQueue fed the same way.
fn queue_row(size: usize, producers: u64, n: u64) -> f64 {
    let name = unique_segment("tq");
    let _unlink = Unlink(name.clone());
    let queue =
        FabricQueue::create(&name, &QueueConfig::new(slots_for(size), size as u64)).unwrap();
    let total = n / producers * producers;
    let (children, start) = start_producers("queue-push", &object_of(&name), producers, n, size);
    pin_consumer(producers);
    let mut buf = vec![0u8; size];
    for _ in 0..total {
        let record = queue.pop_ref(Some(Duration::from_secs(10))).expect("pop");
        buf.copy_from_slice(&record);
    }
    let elapsed = unix_ns() - start;
    slowest(children);
    std::hint::black_box(&buf);
    total as f64 / (elapsed as f64 / 1e9)
}

pub(crate) fn topic_table(runs: usize, scale: u64) {
    let local = LocalInstance::start("topic");
    let mut topics = TopicManager::new();
    println!("## Topic partition throughput (M records/s; producers in processes of their own)\n");
    println!(
        "| size | producers | append only (overwrite) | append -> poll + commit (backpressure) | append -> poll_with + commit | FabricQueue push -> pop | poll / queue | poll_with / queue |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut row = 0;
    for size in SIZES {
        let n = (if size == 64 { 4_000_000 } else { 2_000_000 }) / scale;
        for producers in [1u64, 2] {
            let (mut appends, mut polls, mut borrowed, mut queues) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                row += 1;
                let (a, p, b) = (format!("a{row}"), format!("p{row}"), format!("b{row}"));
                appends.push(append_only(&mut topics, &a, size, producers, n));
                polls.push(append_poll(&mut topics, &p, size, producers, n, false));
                borrowed.push(append_poll(&mut topics, &b, size, producers, n, true));
                queues.push(queue_row(size, producers, n));
            }
            let ratio =
                |ours: &[f64]| median(ours.iter().zip(&queues).map(|(o, q)| o / q).collect());
            println!(
                "| {size} B | {producers} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
                median(appends) / 1e6,
                median(polls.clone()) / 1e6,
                median(borrowed.clone()) / 1e6,
                median(queues.clone()) / 1e6,
                ratio(&polls),
                ratio(&borrowed),
            );
        }
    }
    println!();
    drop(topics);
    local.stop();
}

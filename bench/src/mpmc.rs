//! FabricQueue rows: one producer and one consumer across two processes
//! against crossbeam's `ArrayQueue` between two threads (same slot count),
//! and a blocking 4-producer / 2-consumer row (every side sleeps when it
//! cannot proceed) against `crossbeam-channel`'s bounded channel, the
//! blocking form of the same array queue.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use grafos_shm_layout::header::{Expect, SegmentKind, TypeDescriptor};
use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::layout::queue::QueueError;
use grafos_worker::segment::{Segment, SegmentName, SegmentSpec};

use crate::{
    Unlink, crossbeam_sized, instance_of_parent, median, object_of, pin, records_for, ring_for,
    run_child, self_exe, unique_segment,
};

/// Slots for records of `size` bytes: as many as crossbeam's row gets.
pub fn slots_for(size: usize) -> u64 {
    (ring_for(size) / size as u64).max(16)
}

/// One producer (this process, CPU 0) and one consumer (a child, CPU 1):
/// records per second seen by the consumer.
fn queue_throughput(size: usize, n: u64) -> f64 {
    let name = unique_segment("mq");
    let _unlink = Unlink(name.clone());
    let queue =
        FabricQueue::create(&name, &QueueConfig::new(slots_for(size), size as u64)).unwrap();
    let object = object_of(&name);
    let args = [
        "queue-consume".into(),
        object,
        n.to_string(),
        size.to_string(),
    ];
    let out = run_child(&args, || {
        pin(0);
        let record = vec![7u8; size];
        let mut idle = 0;
        for _ in 0..n {
            loop {
                match queue.try_push(&record) {
                    Ok(_) => {
                        idle = 0;
                        break;
                    }
                    Err(QueueError::Full) => backoff(&mut idle),
                    Err(e) => panic!("push: {e}"),
                }
            }
        }
    });
    n as f64 / (out.trim().parse::<f64>().unwrap() / 1e9)
}

/// The consumer side of `queue_throughput`: copies each record out, as
/// `ArrayQueue::pop` moves the value out.
pub fn queue_consume(object: &str, n: u64, size: usize) {
    pin(1);
    let queue =
        FabricQueue::open(&SegmentName::new(&instance_of_parent(), object).unwrap()).unwrap();
    let mut buf = vec![0u8; size];
    let mut start = None;
    let mut got = 0;
    let mut idle = 0;
    while got < n {
        match queue.try_pop_ref().unwrap() {
            Some(record) => {
                start.get_or_insert_with(Instant::now);
                buf.copy_from_slice(&record);
                got += 1;
                idle = 0;
            }
            None => backoff(&mut idle),
        }
    }
    std::hint::black_box(&buf);
    println!("{}", start.unwrap().elapsed().as_nanos());
}

/// Spins 1, 2, 4, ... 64 times after each failed attempt, so a side that
/// waits does not keep pulling the cache line the other side writes.
pub fn backoff(idle: &mut u32) {
    for _ in 0..1u32 << (*idle).min(6) {
        std::hint::spin_loop();
    }
    *idle += 1;
}

/// One thread pushes 512 records, then pops them, over and over: the
/// instruction cost of a push + pop pair with no other core involved
/// (ns per pair). Returns (FabricQueue, ArrayQueue).
fn single_thread_pair_cost(n: u64) -> (f64, f64) {
    let name = unique_segment("mq1");
    let _unlink = Unlink(name.clone());
    let queue = FabricQueue::create(&name, &QueueConfig::new(1024, 64)).unwrap();
    let array = crossbeam_queue::ArrayQueue::<[u8; 64]>::new(1024);
    let record = [7u8; 64];
    let mut buf = [0u8; 64];
    pin(0);
    let start = Instant::now();
    for _ in 0..n / 512 {
        for _ in 0..512 {
            queue.try_push(&record).unwrap();
        }
        for _ in 0..512 {
            buf.copy_from_slice(&queue.try_pop_ref().unwrap().unwrap());
        }
    }
    let ours = start.elapsed().as_nanos() as f64 / n as f64;
    let start = Instant::now();
    for _ in 0..n / 512 {
        for _ in 0..512 {
            array.push(record).unwrap();
        }
        for _ in 0..512 {
            buf = array.pop().unwrap();
        }
    }
    let theirs = start.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(&buf);
    (ours, theirs)
}

pub fn throughput_table(sizes: &[usize], runs: usize, scale: u64) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (o, t) = single_thread_pair_cost(4_000_000 / scale);
        ours.push(o);
        theirs.push(t);
    }
    println!("## FabricQueue (MPMC) push + pop pair in one thread, 64 B (ns per pair)\n");
    println!("| FabricQueue | crossbeam ArrayQueue | FabricQueue / crossbeam |");
    println!("|---|---|---|");
    let ratio = median(ours.iter().zip(&theirs).map(|(o, t)| o / t).collect());
    println!(
        "| {:.1} | {:.1} | {ratio:.2}x |\n",
        median(ours),
        median(theirs)
    );

    println!("## FabricQueue (MPMC) throughput, one producer and one consumer (M records/s)\n");
    println!(
        "| size | slots | FabricQueue (2 processes) | crossbeam ArrayQueue (2 threads) | FabricQueue / crossbeam |"
    );
    println!("|---|---|---|---|---|");
    for &size in sizes {
        let n = records_for(size, scale);
        let (mut ours, mut cb) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(queue_throughput(size, n));
            cb.push(crossbeam_sized(size, n));
        }
        let ratio = median(ours.iter().zip(&cb).map(|(o, c)| o / c).collect());
        println!(
            "| {size} B | {} | {:.2} | {:.2} | {ratio:.2}x |",
            slots_for(size),
            median(ours) / 1e6,
            median(cb) / 1e6
        );
    }
    println!();
}

// ---------------------------------------------------------- blocking MPMC

const PRODUCERS: u64 = 4;
const CONSUMERS: u64 = 2;
/// A small queue, so both sides fill and empty it and sleep often.
const BLOCKING_SLOTS: u64 = 64;

/// The start gate of the blocking row: children count themselves ready,
/// then wait for `go`.
struct Gate {
    segment: Segment,
}

impl Gate {
    fn create(name: &SegmentName) -> Gate {
        let spec = SegmentSpec {
            kind: SegmentKind::Raw,
            body_len: 256,
            lease_id: 0,
            instance_token: 0,
            payload: TypeDescriptor::BYTES,
        };
        let segment = Segment::create(name, &spec).unwrap();
        segment.activate();
        Gate { segment }
    }

    fn open(name: &SegmentName) -> Gate {
        Gate {
            segment: Segment::open(name, &Expect::default()).unwrap(),
        }
    }

    fn words(&self) -> (&AtomicU32, &AtomicU32) {
        // SAFETY: the body is 256 bytes of a live mapping, 128-aligned; two
        // AtomicU32 at offsets 0 and 128 are in bounds and aligned.
        unsafe {
            let base = self.segment.body().as_ptr();
            (
                &*base.cast::<AtomicU32>(),
                &*base.add(128).cast::<AtomicU32>(),
            )
        }
    }

    /// In a child: report ready, then wait for the start.
    fn enter(&self) {
        let (ready, go) = self.words();
        ready.fetch_add(1, Ordering::AcqRel);
        while go.load(Ordering::Acquire) == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// 4 producer and 2 consumer processes on a 64-slot queue with blocking
/// push and pop: records per second, from the start gate until the
/// consumers have drained the sealed queue.
fn queue_blocking(n: u64) -> f64 {
    let (qname, gname) = (unique_segment("mqb"), unique_segment("gate"));
    let _unlink = (Unlink(qname.clone()), Unlink(gname.clone()));
    let queue = FabricQueue::create(&qname, &QueueConfig::new(BLOCKING_SLOTS, 64)).unwrap();
    let gate = Gate::create(&gname);
    let spawn = |role: &str, count: u64| {
        self_exe()
            .args([
                "child",
                role,
                &object_of(&qname),
                &object_of(&gname),
                &count.to_string(),
            ])
            .spawn()
            .expect("spawn child")
    };
    let mut consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| spawn("queue-block-consume", 0))
        .collect();
    let mut producers: Vec<_> = (0..PRODUCERS)
        .map(|_| spawn("queue-block-produce", n / PRODUCERS))
        .collect();
    let (ready, go) = gate.words();
    while u64::from(ready.load(Ordering::Acquire)) < PRODUCERS + CONSUMERS {
        std::thread::sleep(Duration::from_micros(200));
    }
    let start = Instant::now();
    go.store(1, Ordering::Release);
    for p in &mut producers {
        assert!(p.wait().unwrap().success(), "producer failed");
    }
    queue.seal().unwrap();
    for c in &mut consumers {
        assert!(c.wait().unwrap().success(), "consumer failed");
    }
    let elapsed = start.elapsed();
    assert_eq!(queue.depth(), 0);
    (n / PRODUCERS * PRODUCERS) as f64 / elapsed.as_secs_f64()
}

pub fn queue_block_produce(queue: &str, gate: &str, count: u64) {
    let parent = instance_of_parent();
    let queue = FabricQueue::open(&SegmentName::new(&parent, queue).unwrap()).unwrap();
    Gate::open(&SegmentName::new(&parent, gate).unwrap()).enter();
    let record = [7u8; 64];
    for _ in 0..count {
        queue.push(&record, None).unwrap();
    }
}

pub fn queue_block_consume(queue: &str, gate: &str) {
    let parent = instance_of_parent();
    let queue = FabricQueue::open(&SegmentName::new(&parent, queue).unwrap()).unwrap();
    Gate::open(&SegmentName::new(&parent, gate).unwrap()).enter();
    let mut buf = [0u8; 64];
    loop {
        match queue.pop_ref(None) {
            Ok(record) => buf.copy_from_slice(&record),
            Err(QueueError::Sealed) => break,
            Err(e) => panic!("pop: {e}"),
        }
    }
    std::hint::black_box(&buf);
}

/// The same shape with threads on `crossbeam-channel`'s bounded channel
/// (senders and receivers park when it is full or empty).
fn channel_blocking(n: u64) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(BLOCKING_SLOTS as usize);
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in 0..n / PRODUCERS {
                    tx.send([7u8; 64]).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(record) = rx.recv() {
                    buf = record;
                }
                std::hint::black_box(&buf);
            })
        })
        .collect();
    for t in producers.into_iter().chain(consumers) {
        t.join().unwrap();
    }
    (n / PRODUCERS * PRODUCERS) as f64 / start.elapsed().as_secs_f64()
}

pub fn blocking_table(runs: usize, scale: u64) {
    let n = 2_000_000 / scale;
    let (mut ours, mut cb) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(queue_blocking(n));
        cb.push(channel_blocking(n));
    }
    let ratio = median(ours.iter().zip(&cb).map(|(o, c)| o / c).collect());
    println!(
        "## Blocking MPMC, 4 producers / 2 consumers, 64 B, {BLOCKING_SLOTS} slots, everyone sleeps when blocked (M records/s)\n"
    );
    println!(
        "| FabricQueue (6 processes) | crossbeam-channel bounded (6 threads) | FabricQueue / channel |"
    );
    println!("|---|---|---|");
    println!(
        "| {:.2} | {:.2} | {ratio:.2}x |",
        median(ours) / 1e6,
        median(cb) / 1e6
    );
    println!();
}

//! Side-by-side benchmarks: grafos edge logs and FabricQueues against
//! crossbeam's `ArrayQueue` and bounded channel, a Unix socket pair, a pipe, a bare futex and iceoryx2,
//! in one run, printing tables of medians.
//!
//! Two-process rows run the other side as a child process (this binary,
//! `fabric-bench child ...`); the two sides are pinned to CPUs 0 and 1.
//! Never more than two spinning threads at a time.

mod iox;
mod local;
mod mpmc;
mod rebind;
mod recipe31;
mod repair;
mod store;
mod topic;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_queue::ArrayQueue;
use grafos_shm_layout::header::{SegmentKind, TypeDescriptor};
use grafos_worker::edge::{EdgeConfig, EdgeLog};
use grafos_worker::segment::{Segment, SegmentName, SegmentSpec};
use rustix::thread::futex;

/// Benchmarks grafos edge logs side by side with their peers.
#[derive(Parser)]
#[command(about, long_about)]
struct Args {
    /// Runs per row; the table shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Fewer records per run (a quick look, not for the record).
    #[arg(long)]
    quick: bool,
    /// Skip the iceoryx2 rows.
    #[arg(long)]
    no_iceoryx2: bool,
    /// Only the FabricQueue (MPMC) tables.
    #[arg(long)]
    mpmc_only: bool,
    /// Only the death-to-repair row.
    #[arg(long)]
    repair_only: bool,
    /// Only the relocation / rebind and pipeline rows.
    #[arg(long)]
    rebind_only: bool,
    /// Only the object store vs Redis table.
    #[arg(long)]
    store_only: bool,
    /// Only the topic table.
    #[arg(long)]
    topic_only: bool,
    /// Only the recipe 31 pipeline table (grafos vs Redis).
    #[arg(long)]
    recipe31_only: bool,
    /// Objects per run of the recipe 31 table.
    #[arg(long, default_value_t = 100_000)]
    recipe31_objects: u64,
    /// Objects per second of the recipe 31 latency table (paced runs of
    /// five seconds).
    #[arg(long, default_value_t = 5_000)]
    recipe31_rate: u64,
    /// The recipe31 example binary (built by
    /// `cargo build --release -p grafos-examples`).
    #[arg(long, default_value = "../target/release/recipe31")]
    recipe31_bin: std::path::PathBuf,
    /// A Redis server for the store table (`HOST:PORT`; started by
    /// scripts/redis-bench.sh). Without it the Redis rows are skipped.
    #[arg(long)]
    redis: Option<String>,
    /// Distinct keys each process of the store table puts and gets.
    #[arg(long, default_value_t = 1000)]
    store_keys: u64,
    /// Relocations for the relocation / rebind row.
    #[arg(long, default_value_t = 200)]
    relocations: u64,
    /// SIGKILLs for the death-to-repair row.
    #[arg(long, default_value_t = 200)]
    kills: usize,
    /// Record sizes for the throughput rows (repeat the flag; default 64,
    /// 1024 and 65536).
    #[arg(long = "size")]
    sizes: Vec<usize>,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("child") {
        std::process::exit(child(&argv[2..]));
    }
    let args = Args::parse();
    let scale = if args.quick { 10 } else { 1 };
    let sizes = if args.sizes.is_empty() {
        SIZES.to_vec()
    } else {
        args.sizes.clone()
    };
    if let Some(bad) = sizes.iter().find(|s| !SIZES.contains(s)) {
        eprintln!("--size {bad}: choose from {SIZES:?}");
        std::process::exit(2);
    }
    let runs = args.runs.max(1);
    println!(
        "fabric-bench: medians of {runs} runs; producer/ping side on CPU 0, consumer/pong side on CPU 1"
    );
    println!("(ratio columns: median of the per-run ratios)\n");
    if args.repair_only {
        repair::repair_table(args.kills);
        return;
    }
    if args.store_only {
        store::store_table(runs, args.redis.as_deref(), args.store_keys.max(1));
        return;
    }
    if args.recipe31_only {
        recipe31::recipe31_table(
            runs,
            args.redis.as_deref(),
            args.recipe31_objects,
            args.recipe31_rate.max(1),
            &args.recipe31_bin,
        );
        return;
    }
    if args.topic_only {
        topic::topic_table(runs, scale);
        return;
    }
    if args.rebind_only {
        rebind::rebind_table(args.relocations);
        return;
    }
    if !args.mpmc_only {
        throughput_table(&sizes, runs, scale, args.no_iceoryx2);
    }
    mpmc::throughput_table(&sizes, runs, scale);
    mpmc::blocking_table(runs, scale);
    if args.mpmc_only {
        return;
    }
    topic::topic_table(runs, scale);
    latency_table(runs, scale, args.no_iceoryx2);
    blocking_table(runs, scale);
    repair::repair_table(args.kills);
    rebind::rebind_table(args.relocations);
    store::store_table(runs, args.redis.as_deref(), args.store_keys.max(1));
    iox::cleanup();
}

// ---------------------------------------------------------------- helpers

pub(crate) fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub(crate) fn self_exe() -> Command {
    Command::new(std::env::current_exe().expect("current exe"))
}

/// Runs `fabric-bench child ARGS`, returning its stdout.
pub(crate) fn run_child(args: &[String], during: impl FnOnce()) -> String {
    let mut child = self_exe()
        .arg("child")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    during();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "child {args:?} failed");
    out
}

fn instance() -> String {
    format!("bench{}", std::process::id())
}

pub(crate) fn unique_segment(tag: &str) -> SegmentName {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    SegmentName::new(&instance(), &format!("{tag}{n}")).unwrap()
}

/// The object part of a segment name, as a child is told it (the child
/// knows the instance: its parent's).
pub(crate) fn object_of(name: &SegmentName) -> String {
    name.as_str().rsplit('.').next().unwrap().to_owned()
}

/// Unlinks a segment when dropped.
pub(crate) struct Unlink(SegmentName);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn child(args: &[String]) -> i32 {
    let num = |i: usize| args[i].parse::<u64>().expect("number");
    match args[0].as_str() {
        "edge-consume" => edge_consume(&args[1], num(2), num(3) as usize),
        "edge-pong" => edge_pong(&args[1], &args[2], num(3), args[4] == "blocking"),
        "futex-pong" => futex_pong(&args[1], num(2)),
        "queue-consume" => mpmc::queue_consume(&args[1], num(2), num(3) as usize),
        "queue-block-produce" => mpmc::queue_block_produce(&args[1], &args[2], num(3)),
        "queue-block-consume" => mpmc::queue_block_consume(&args[1], &args[2]),
        "claimer" => repair::claimer(&args[1]),
        "rebind-consumer" => rebind::consumer(&args[1], num(2), num(3)),
        "store-load" => store::load(&args[1..]),
        "topic-append" => topic::append(&args[1..]),
        "queue-push" => topic::push(&args[1..]),
        "r31-producer" => recipe31::producer(&args[1..]),
        "r31-worker" => recipe31::worker(&args[1..]),
        "iox" => return iox::child(&args[1..]),
        other => panic!("unknown child role {other}"),
    }
    0
}

// ------------------------------------------------------------- throughput

pub(crate) const SIZES: [usize; 3] = [64, 1024, 65536];

pub(crate) fn records_for(size: usize, scale: u64) -> u64 {
    (match size {
        64 => 20_000_000,
        1024 => 4_000_000,
        _ => 100_000,
    }) / scale
}

pub(crate) fn ring_for(size: usize) -> u64 {
    (size as u64 * 64).max(1 << 20)
}

/// Edge log between two processes: records per second seen by the consumer.
fn edge_throughput(size: usize, n: u64) -> f64 {
    let name = unique_segment("tp");
    let _unlink = Unlink(name.clone());
    let log = EdgeLog::create(
        &name,
        &EdgeConfig {
            capacity: ring_for(size),
            ..EdgeConfig::default()
        },
    )
    .unwrap();
    let mut producer = log.producer().unwrap();
    let object = object_of(&name);
    let args = [
        "edge-consume".into(),
        object,
        n.to_string(),
        size.to_string(),
    ];
    let out = run_child(&args, || {
        pin(0);
        let record = vec![7u8; size];
        for _ in 0..n {
            while producer.try_push(&record).is_err() {
                std::hint::spin_loop();
            }
        }
    });
    n as f64 / (out.trim().parse::<f64>().unwrap() / 1e9)
}

fn edge_consume(object: &str, n: u64, size: usize) {
    pin(1);
    let log = EdgeLog::open(&SegmentName::new(&instance_of_parent(), object).unwrap()).unwrap();
    let mut consumer = log.consumer().unwrap();
    let mut buf = vec![0u8; size];
    let mut start = None;
    let mut got = 0;
    while got < n {
        match consumer.try_read().unwrap() {
            Some(record) => {
                start.get_or_insert_with(Instant::now);
                buf.copy_from_slice(record.bytes());
                got += 1;
                // Commit every 64 records, or sooner once a quarter of the
                // ring is waiting (large records), so the producer always
                // has room: as a consumer committing per poll batch would.
                let pending = consumer.read_position() - consumer.committed_position();
                if got % 64 == 0 || pending >= ring_for(size) / 4 {
                    consumer.commit_read();
                }
            }
            None => std::hint::spin_loop(),
        }
    }
    consumer.commit_read();
    std::hint::black_box(&buf);
    println!("{}", start.unwrap().elapsed().as_nanos());
}

/// The parent's instance name, as seen from a child.
pub(crate) fn instance_of_parent() -> String {
    format!("bench{}", std::os::unix::process::parent_id())
}

/// crossbeam `ArrayQueue` between two pinned threads, holding as many
/// bytes as the edge log's ring.
fn crossbeam_throughput<const S: usize>(n: u64) -> f64 {
    let queue = Arc::new(ArrayQueue::<[u8; S]>::new(
        (ring_for(S) as usize / S).max(16),
    ));
    let consumer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            pin(1);
            let mut buf = [0u8; S];
            let mut start = None;
            for _ in 0..n {
                loop {
                    if let Some(value) = queue.pop() {
                        start.get_or_insert_with(Instant::now);
                        buf = value;
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            std::hint::black_box(&buf);
            start.unwrap().elapsed()
        })
    };
    let producer = std::thread::spawn(move || {
        pin(0);
        let record = [7u8; S];
        for _ in 0..n {
            while queue.push(record).is_err() {
                std::hint::spin_loop();
            }
        }
    });
    producer.join().unwrap();
    n as f64 / consumer.join().unwrap().as_secs_f64()
}

pub(crate) fn crossbeam_sized(size: usize, n: u64) -> f64 {
    match size {
        64 => crossbeam_throughput::<64>(n),
        1024 => crossbeam_throughput::<1024>(n),
        _ => std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || crossbeam_throughput::<65536>(n))
            .unwrap()
            .join()
            .unwrap(),
    }
}

/// One record per syscall through a Unix datagram socket pair (record
/// boundaries kept), between two pinned threads.
fn socket_throughput(size: usize, n: u64) -> f64 {
    let (tx, rx) = UnixDatagram::pair().unwrap();
    // Large buffers, so the writer is not throttled by tiny defaults.
    for s in [&tx, &rx] {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, 4 << 20);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, 4 << 20);
    }
    let reader = std::thread::spawn(move || {
        pin(1);
        let mut buf = vec![0u8; size];
        let mut start = None;
        for _ in 0..n {
            let got = rx.recv(&mut buf).unwrap();
            start.get_or_insert_with(Instant::now);
            assert_eq!(got, size);
        }
        start.unwrap().elapsed()
    });
    pin(0);
    let record = vec![7u8; size];
    for _ in 0..n {
        tx.send(&record).unwrap();
    }
    n as f64 / reader.join().unwrap().as_secs_f64()
}

/// One write per record through a pipe (reads loop until the record is
/// whole), between two pinned threads.
fn pipe_throughput(size: usize, n: u64) -> f64 {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let _ = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20);
    let mut reader_file = std::fs::File::from(r);
    let mut writer_file = std::fs::File::from(w);
    let reader = std::thread::spawn(move || {
        pin(1);
        let mut buf = vec![0u8; size];
        let mut start = None;
        for _ in 0..n {
            reader_file.read_exact(&mut buf).unwrap();
            start.get_or_insert_with(Instant::now);
        }
        start.unwrap().elapsed()
    });
    pin(0);
    let record = vec![7u8; size];
    for _ in 0..n {
        writer_file.write_all(&record).unwrap();
    }
    n as f64 / reader.join().unwrap().as_secs_f64()
}

fn throughput_table(sizes: &[usize], runs: usize, scale: u64, no_iceoryx2: bool) {
    println!("## Throughput, one producer and one consumer (M records/s)\n");
    println!(
        "| size | edge log (2 processes) | crossbeam ArrayQueue (2 threads) | Unix socket (2 threads) | pipe (2 threads) | iceoryx2 (2 processes) | edge / crossbeam | edge / socket |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &size in sizes {
        let n = records_for(size, scale);
        let syscall_n = (n / 40).max(1000);
        let mut edge = Vec::new();
        let mut cb = Vec::new();
        let mut sock = Vec::new();
        let mut pipe = Vec::new();
        let mut iox_runs = Vec::new();
        // Interleave the rows run by run, so drift hits them alike.
        for _ in 0..runs {
            edge.push(edge_throughput(size, n));
            cb.push(crossbeam_sized(size, n));
            sock.push(socket_throughput(size, syscall_n));
            pipe.push(pipe_throughput(size, syscall_n));
            if size == 64 && !no_iceoryx2 {
                iox_runs.push(iox::throughput(n / 20));
            }
        }
        // Ratios per run (neighbours in time), then their median: steadier
        // than a ratio of medians when the host moves the vCPUs.
        let vs_cb = median(edge.iter().zip(&cb).map(|(e, c)| e / c).collect());
        let vs_sock = median(edge.iter().zip(&sock).map(|(e, s)| e / s).collect());
        let (edge, cb, sock, pipe) = (median(edge), median(cb), median(sock), median(pipe));
        let iox = if iox_runs.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", median(iox_runs) / 1e6)
        };
        println!(
            "| {size} B | {:.2} | {:.2} | {:.3} | {:.3} | {iox} | {:.2}x | {:.1}x |",
            edge / 1e6,
            cb / 1e6,
            sock / 1e6,
            pipe / 1e6,
            vs_cb,
            vs_sock
        );
    }
    println!();
}

// ---------------------------------------------------------------- latency

/// Ping-pong over two edge logs with a child process; returns one-way
/// latencies (round trip / 2) in ns. `blocking`: both sides sleep in
/// futex waits, and each ping waits until the pong side has gone to sleep.
fn edge_ping_pong(samples: usize, warmup: usize, blocking: bool) -> Vec<u64> {
    let (ping, pong) = (unique_segment("ping"), unique_segment("pong"));
    let _unlink = (Unlink(ping.clone()), Unlink(pong.clone()));
    let config = EdgeConfig {
        capacity: 1 << 16,
        ..EdgeConfig::default()
    };
    let ping_log = EdgeLog::create(&ping, &config).unwrap();
    let pong_log = EdgeLog::create(&pong, &config).unwrap();
    let total = samples + warmup;
    let args = [
        "edge-pong".into(),
        object_of(&ping),
        object_of(&pong),
        total.to_string(),
        (if blocking { "blocking" } else { "spin" }).into(),
    ];
    let mut latencies = Vec::with_capacity(samples);
    run_child(&args, || {
        pin(0);
        let mut producer = ping_log.producer().unwrap();
        let mut consumer = pong_log.consumer().unwrap();
        let payload = [1u8; 64];
        for i in 0..total {
            if blocking {
                let idle = Instant::now() + Duration::from_micros(200);
                while Instant::now() < idle {
                    std::hint::spin_loop();
                }
            }
            let start = Instant::now();
            while producer.try_push(&payload).is_err() {
                std::hint::spin_loop();
            }
            if blocking {
                consumer.read(None).unwrap();
            } else {
                while consumer.try_read().unwrap().is_none() {
                    std::hint::spin_loop();
                }
            }
            let rtt = start.elapsed().as_nanos() as u64;
            consumer.commit_read();
            if i >= warmup {
                latencies.push(rtt / 2);
            }
        }
    });
    latencies
}

fn edge_pong(ping: &str, pong: &str, total: u64, blocking: bool) {
    pin(1);
    let instance = instance_of_parent();
    let ping_log = EdgeLog::open(&SegmentName::new(&instance, ping).unwrap()).unwrap();
    let pong_log = EdgeLog::open(&SegmentName::new(&instance, pong).unwrap()).unwrap();
    let mut consumer = ping_log.consumer().unwrap();
    let mut producer = pong_log.producer().unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..total {
        if blocking {
            buf.copy_from_slice(consumer.read(None).unwrap().bytes());
        } else {
            loop {
                if let Some(record) = consumer.try_read().unwrap() {
                    buf.copy_from_slice(record.bytes());
                    break;
                }
                std::hint::spin_loop();
            }
        }
        consumer.commit_read();
        while producer.try_push(&buf).is_err() {
            std::hint::spin_loop();
        }
    }
}

/// Ping-pong between two pinned threads over two crossbeam queues.
fn crossbeam_ping_pong(samples: usize, warmup: usize) -> Vec<u64> {
    let ping = Arc::new(ArrayQueue::<[u8; 64]>::new(64));
    let pong = Arc::new(ArrayQueue::<[u8; 64]>::new(64));
    let total = samples + warmup;
    let echo = {
        let (ping, pong) = (ping.clone(), pong.clone());
        std::thread::spawn(move || {
            pin(1);
            for _ in 0..total {
                let value = loop {
                    if let Some(v) = ping.pop() {
                        break v;
                    }
                    std::hint::spin_loop();
                };
                while pong.push(value).is_err() {}
            }
        })
    };
    pin(0);
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..total {
        let start = Instant::now();
        while ping.push([1; 64]).is_err() {}
        while pong.pop().is_none() {
            std::hint::spin_loop();
        }
        if i >= warmup {
            latencies.push(start.elapsed().as_nanos() as u64 / 2);
        }
    }
    echo.join().unwrap();
    latencies
}

struct Latency {
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            p50: Vec::new(),
            p99: Vec::new(),
        }
    }

    fn add(&mut self, mut samples: Vec<u64>) {
        samples.sort_unstable();
        self.p50.push(percentile(&samples, 0.50) as f64);
        self.p99.push(percentile(&samples, 0.99) as f64);
    }

    fn medians(&self) -> (f64, f64) {
        (median(self.p50.clone()), median(self.p99.clone()))
    }
}

fn latency_table(runs: usize, scale: u64, no_iceoryx2: bool) {
    let samples = 200_000 / scale as usize;
    let warmup = samples / 10;
    let (mut edge, mut cb, mut iox) = (Latency::new(), Latency::new(), Latency::new());
    for _ in 0..runs {
        edge.add(edge_ping_pong(samples, warmup, false));
        cb.add(crossbeam_ping_pong(samples, warmup));
        if !no_iceoryx2 {
            iox.add(iox::latency(samples, warmup));
        }
    }
    println!("## One-way latency, 64 B, busy-poll on both sides (ns; round trip / 2)\n");
    println!("| transport | p50 | p99 |");
    println!("|---|---|---|");
    let (e50, e99) = edge.medians();
    println!("| edge log (2 processes) | {e50:.0} | {e99:.0} |");
    let (c50, c99) = cb.medians();
    println!("| crossbeam ArrayQueue (2 threads) | {c50:.0} | {c99:.0} |");
    if !no_iceoryx2 {
        let (i50, i99) = iox.medians();
        println!("| iceoryx2 publish-subscribe (2 processes) | {i50:.0} | {i99:.0} |");
        println!("\nedge log / iceoryx2 at p50: {:.2}x", e50 / i50);
    }
    println!();
}

// ------------------------------------------------------------- blocking

/// The smallest blocking round trip: two processes hand a futex word back
/// and forth (FUTEX_WAIT / FUTEX_WAKE, nothing else).
fn futex_ping_pong(samples: usize, warmup: usize) -> Vec<u64> {
    let name = unique_segment("futex");
    let _unlink = Unlink(name.clone());
    let spec = SegmentSpec {
        kind: SegmentKind::Raw,
        body_len: 256,
        lease_id: 0,
        instance_token: 0,
        payload: TypeDescriptor::BYTES,
    };
    let segment = Segment::create(&name, &spec).unwrap();
    segment.activate();
    let words = futex_words(&segment);
    let total = samples + warmup;
    let object = object_of(&name);
    let mut latencies = Vec::with_capacity(samples);
    run_child(&["futex-pong".into(), object, total.to_string()], || {
        pin(0);
        for i in 1..=total as u32 {
            let idle = Instant::now() + Duration::from_micros(200);
            while Instant::now() < idle {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            words[0].store(i, Ordering::Release);
            let _ = futex::wake(words[0], futex::Flags::empty(), 1);
            while words[1].load(Ordering::Acquire) != i {
                let _ = futex::wait(words[1], futex::Flags::empty(), i - 1, None);
            }
            if i as usize > warmup {
                latencies.push(start.elapsed().as_nanos() as u64 / 2);
            }
        }
    });
    latencies
}

fn futex_words(segment: &Segment) -> [&AtomicU32; 2] {
    // SAFETY: the body is 256 zeroed bytes of a live mapping, 128-aligned;
    // two AtomicU32 at offsets 0 and 128 are in bounds and aligned.
    unsafe {
        let base = segment.body().as_ptr();
        [
            &*base.cast::<AtomicU32>(),
            &*base.add(128).cast::<AtomicU32>(),
        ]
    }
}

fn futex_pong(object: &str, total: u64) {
    pin(1);
    let segment = Segment::open(
        &SegmentName::new(&instance_of_parent(), object).unwrap(),
        &grafos_shm_layout::header::Expect::default(),
    )
    .unwrap();
    let words = futex_words(&segment);
    for i in 1..=total as u32 {
        while words[0].load(Ordering::Acquire) != i {
            let _ = futex::wait(words[0], futex::Flags::empty(), i - 1, None);
        }
        words[1].store(i, Ordering::Release);
        let _ = futex::wake(words[1], futex::Flags::empty(), 1);
    }
}

/// Ping-pong over a Unix socket pair between two threads (both block).
fn socket_ping_pong(samples: usize, warmup: usize) -> Vec<u64> {
    let (a, b) = UnixDatagram::pair().unwrap();
    let total = samples + warmup;
    let echo = std::thread::spawn(move || {
        pin(1);
        let mut buf = [0u8; 64];
        for _ in 0..total {
            let n = b.recv(&mut buf).unwrap();
            b.send(&buf[..n]).unwrap();
        }
    });
    pin(0);
    let mut buf = [0u8; 64];
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..total {
        let idle = Instant::now() + Duration::from_micros(200);
        while Instant::now() < idle {
            std::hint::spin_loop();
        }
        let start = Instant::now();
        a.send(&buf).unwrap();
        a.recv(&mut buf).unwrap();
        if i >= warmup {
            latencies.push(start.elapsed().as_nanos() as u64 / 2);
        }
    }
    echo.join().unwrap();
    latencies
}

fn blocking_table(runs: usize, scale: u64) {
    let samples = 5_000 / scale as usize;
    let warmup = samples / 10;
    let (mut edge, mut bare, mut sock) = (Latency::new(), Latency::new(), Latency::new());
    for _ in 0..runs {
        edge.add(edge_ping_pong(samples, warmup, true));
        bare.add(futex_ping_pong(samples, warmup));
        sock.add(socket_ping_pong(samples, warmup));
    }
    println!("## Blocking wake, 64 B: the receiver is asleep when the record comes (one-way ns)\n");
    println!("| transport | p50 | p99 |");
    println!("|---|---|---|");
    let (e50, e99) = edge.medians();
    let (b50, b99) = bare.medians();
    let (s50, s99) = sock.medians();
    println!("| edge log, blocking read (2 processes) | {e50:.0} | {e99:.0} |");
    println!("| bare futex round trip (2 processes) | {b50:.0} | {b99:.0} |");
    println!("| Unix socket pair (2 threads) | {s50:.0} | {s99:.0} |");
    println!("\nedge log / bare futex at p50: {:.2}x", e50 / b50);
    println!();
}

//! The object store against a local Redis server: put and get of 1 KiB
//! values with short keys, from one and two processes, side by side in
//! one run. Redis is driven with HSET / HGET over loopback, one command
//! per round trip and pipelined in batches.
//!
//! Two-process rows start both sides (child processes of this binary,
//! pinned to CPUs 0 and 1) at one agreed instant and divide all their
//! operations by the longer of the two times.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore};

use crate::local::LocalInstance;
use crate::{median, pin, self_exe};

/// Value size.
const VALUE: usize = 1024;
/// Commands per Redis pipeline.
const BATCH: u64 = 100;

/// Which operation a row times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// How a row talks to its store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Grafos,
    RedisPipelined,
    RedisOneByOne,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Grafos => "grafos",
            Peer::RedisPipelined => "redis-pipelined",
            Peer::RedisOneByOne => "redis",
        }
    }

    fn parse(text: &str) -> Peer {
        match text {
            "grafos" => Peer::Grafos,
            "redis-pipelined" => Peer::RedisPipelined,
            _ => Peer::RedisOneByOne,
        }
    }
}

/// Nanoseconds since the Unix epoch: a clock every process of a row
/// agrees on (their start instant).
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

fn key(process: u64, i: u64, keys: u64) -> String {
    format!("p{process}k{}", i % keys)
}

/// Child role: `store-load PEER OP PROCESS OPS START_NS REDIS_ADDR KEYS`:
/// waits for START_NS, runs OPS operations, prints nanoseconds from
/// START_NS to the last one's end.
pub(crate) fn load(args: &[String]) {
    let peer = Peer::parse(&args[0]);
    let op = if args[1] == "put" { Op::Put } else { Op::Get };
    let process: u64 = args[2].parse().expect("process");
    let ops: u64 = args[3].parse().expect("ops");
    let start: u64 = args[4].parse().expect("start");
    let keys: u64 = args[6].parse().expect("keys");
    pin(process as usize % 2);
    let value = vec![0x5a_u8; VALUE];
    let run: Box<dyn FnMut()> = match peer {
        Peer::Grafos => {
            let store = MemObjectStore::open().expect("open the store");
            let instance = std::env::var("GRAFOS_INSTANCE").expect("instance");
            let uris: Vec<FabricUri> = (0..keys)
                .map(|i| FabricUri::new(&instance, "bench", &key(process, i, keys)).unwrap())
                .collect();
            let mut out = Vec::new();
            Box::new(move || {
                for i in 0..ops {
                    let uri = &uris[(i % keys) as usize];
                    match op {
                        Op::Put => {
                            store.put(uri, &value, None).expect("put");
                        }
                        Op::Get => {
                            out = store.get(uri).expect("get").expect("present");
                        }
                    }
                }
                assert!(op == Op::Put || out.len() == VALUE);
            })
        }
        Peer::RedisPipelined | Peer::RedisOneByOne => {
            let client = redis::Client::open(format!("redis://{}/", args[5])).expect("redis url");
            let mut con = client.get_connection().expect("connect to redis");
            let batch = if peer == Peer::RedisPipelined {
                BATCH
            } else {
                1
            };
            Box::new(move || {
                let mut i = 0;
                while i < ops {
                    let mut pipe = redis::pipe();
                    for j in i..(i + batch).min(ops) {
                        match op {
                            Op::Put => pipe
                                .hset("bench", key(process, j, keys), &value[..])
                                .ignore(),
                            Op::Get => pipe.hget("bench", key(process, j, keys)),
                        };
                    }
                    let got: Vec<Vec<u8>> = pipe.query(&mut con).expect("redis");
                    assert!(op == Op::Put || got.iter().all(|v| v.len() == VALUE));
                    i += batch;
                }
            })
        }
    };
    let mut run = run;
    while unix_ns() < start {
        std::hint::spin_loop();
    }
    run();
    println!("{}", unix_ns() - start);
}

/// Runs one row: `processes` children doing `ops` operations each;
/// operations per second over the slower child's time.
fn row(peer: Peer, op: Op, processes: u64, ops: u64, redis: &str, keys: u64) -> f64 {
    let start = unix_ns() + 300_000_000;
    let children: Vec<_> = (0..processes)
        .map(|p| {
            self_exe()
                .args([
                    "child",
                    "store-load",
                    peer.name(),
                    op.name(),
                    &p.to_string(),
                    &ops.to_string(),
                    &start.to_string(),
                    redis,
                    &keys.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a load child")
        })
        .collect();
    let mut slowest = 0u64;
    for mut child in children {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(child.wait().unwrap().success(), "load child failed");
        slowest = slowest.max(line.trim().parse().expect("elapsed ns"));
    }
    (processes * ops) as f64 / (slowest as f64 / 1e9)
}

pub(crate) fn store_table(runs: usize, redis: Option<&str>, keys: u64) {
    let local = LocalInstance::start("store");
    // The store itself, made once; children open it.
    let store = MemObjectStore::new(1 << 14).expect("the store");
    let redis_addr = redis.unwrap_or("");
    let peers: Vec<Peer> = if redis.is_some() {
        vec![Peer::Grafos, Peer::RedisPipelined, Peer::RedisOneByOne]
    } else {
        println!("(no --redis ADDR: Redis rows skipped; scripts/redis-bench.sh runs them)");
        vec![Peer::Grafos]
    };
    // Operations per process per run, by peer: each run lasts about a
    // second at the speeds seen here.
    let ops = |peer: Peer| match peer {
        Peer::Grafos => 1_000_000,
        Peer::RedisPipelined => 200_000,
        Peer::RedisOneByOne => 20_000,
    };
    // Both processes' keys exist before any get row.
    for &peer in &peers {
        fill_both(peer, redis_addr, keys);
    }
    println!(
        "object store: {VALUE} B values, short keys, {keys} keys per process; ops/s, median of {runs} runs"
    );
    print!("{:<4} {:>5}", "op", "procs");
    for peer in &peers {
        print!(" {:>16}", peer.name());
    }
    if redis.is_some() {
        print!(" {:>14} {:>14}", "x pipelined", "x one-by-one");
    }
    println!();
    for op in [Op::Put, Op::Get] {
        for processes in [1u64, 2] {
            let mut medians = Vec::new();
            let mut ratios = (Vec::new(), Vec::new());
            let mut per_peer: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
            for _ in 0..runs {
                let results: Vec<f64> = peers
                    .iter()
                    .map(|&peer| row(peer, op, processes, ops(peer), redis_addr, keys))
                    .collect();
                if results.len() == 3 {
                    ratios.0.push(results[0] / results[1]);
                    ratios.1.push(results[0] / results[2]);
                }
                for (all, r) in per_peer.iter_mut().zip(results) {
                    all.push(r);
                }
            }
            for all in per_peer {
                medians.push(median(all));
            }
            print!("{:<4} {:>5}", op.name(), processes);
            for m in &medians {
                print!(" {:>16.0}", m);
            }
            if redis.is_some() {
                print!(" {:>13.1}x {:>13.1}x", median(ratios.0), median(ratios.1));
            }
            println!();
        }
    }
    let stats = store.map().stats().expect("stats");
    println!(
        "(store after the runs: {} entries, {} arenas, {} bytes of arenas, {} blocks freed and reused)",
        stats.entries, stats.arenas, stats.arena_bytes, stats.freed_blocks
    );
    drop(store);
    local.stop();
    std::thread::sleep(Duration::from_millis(10));
}

/// Writes every key of both processes once, so get rows find them.
fn fill_both(peer: Peer, redis: &str, keys: u64) {
    row(peer, Op::Put, 2, keys, redis, keys);
}

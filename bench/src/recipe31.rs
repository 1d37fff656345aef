//! Recipe 31 side by side: the grafos pipeline (the `recipe31` example: a
//! producer and three worker processes under `grafos run`, objects in the
//! shared-memory object store, notifications on a topic, a consumer
//! group) against the same pipeline over a local Redis server: the
//! producer `HSET`s each object into `objects` and `XADD`s its URI and put
//! time to the `object-events` stream; three worker processes in consumer
//! group `processors` `XREADGROUP`, `HGET` the object, checksum it, `HSET`
//! the result into `results` and `XACK`. Same payload (1 KiB objects),
//! same process count, same result format.
//!
//! * naive: one command per round trip (`XREADGROUP COUNT 1`);
//! * batched: the producer pipelines 256 objects (`HSET` + `XADD`) per
//!   round trip; workers read with `XREADGROUP COUNT 256`, then pipeline
//!   the `HGET`s, then the `HSET`s and one `XACK`.
//!
//! Events/s is objects over first put to last result; latency is put to
//! result, from the timestamps in each result (on both sides the result's
//! time is taken as it is made, just before it is written; in batched
//! Redis, before the batch's writes are sent). Each producer starts once
//! every worker has joined its group. The grafos workers do a little more
//! per record (they read the previous result to count reprocessing).

#[path = "../../examples/src/recipe31/common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::Value;

use crate::{median, self_exe};

/// Workers in the group, as in the grafos run.
const WORKERS: u32 = 3;
/// Records per round trip in batched mode.
const BATCH: usize = 256;
/// Bytes per object.
const SIZE: usize = 1024;

/// One run's outcome.
#[derive(Clone, Copy, Debug)]
struct Run {
    events_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

/// Prints two tables of grafos, Redis batched and Redis naive (medians
/// of `runs` runs): as fast as each goes (events/s; the latency then is
/// mostly time queued), then paced at `rate` objects/s, below what each
/// sustains (latency of one object through the pipeline).
pub fn recipe31_table(runs: usize, redis: Option<&str>, objects: u64, rate: u64, recipe31: &Path) {
    println!(
        "recipe 31 pipeline: {objects} objects of {SIZE} B, 1 producer + {WORKERS} worker processes, unpaced (events/s: first put to last result; latency: put -> result)"
    );
    pipeline_table(runs, redis, objects, 0, recipe31);
    let paced = (rate * 5).min(objects);
    println!(
        "recipe 31 pipeline paced at {rate} objects/s ({paced} objects): latency put -> result"
    );
    pipeline_table(runs, redis, paced, rate, recipe31);
}

/// One table: each pipeline `runs` times, rows interleaved run by run.
fn pipeline_table(runs: usize, redis: Option<&str>, objects: u64, rate: u64, recipe31: &Path) {
    let mut rows: Vec<(&str, Vec<Run>)> = vec![("grafos (shm store + topic + group)", Vec::new())];
    let modes: &[(&str, Mode)] = &[
        ("Redis batched (pipelined, COUNT 256)", Mode::Batched),
        ("Redis naive (one command per trip)", Mode::Naive),
    ];
    if redis.is_some() {
        rows.extend(modes.iter().map(|(name, _)| (*name, Vec::new())));
    } else {
        println!(
            "  (no --redis: the Redis rows are skipped; scripts/recipe31-bench.sh starts one)"
        );
    }
    for run in 0..runs {
        rows[0].1.push(grafos_run(recipe31, objects, rate));
        if let Some(addr) = redis {
            for (i, (_, mode)) in modes.iter().enumerate() {
                rows[i + 1].1.push(redis_run(addr, *mode, objects, rate));
            }
        }
        eprintln!("  run {} of {runs} done", run + 1);
    }
    println!(
        "{:<38} {:>12} {:>10} {:>10} {:>14}",
        "pipeline", "events/s", "p50 us", "p99 us", "grafos is x"
    );
    let ours = &rows[0].1;
    for (name, results) in &rows {
        let ratio = median(
            ours.iter()
                .zip(results)
                .map(|(o, r)| o.events_per_sec / r.events_per_sec)
                .collect(),
        );
        println!(
            "{name:<38} {:>12.0} {:>10.0} {:>10.0} {:>13.1}x",
            median(results.iter().map(|r| r.events_per_sec).collect()),
            median(results.iter().map(|r| r.p50_us as f64).collect()),
            median(results.iter().map(|r| r.p99_us as f64).collect()),
            ratio
        );
    }
    println!();
}

/// Runs the `recipe31` demo and reads its report.
fn grafos_run(recipe31: &Path, objects: u64, rate: u64) -> Run {
    let out = std::process::Command::new(recipe31)
        .args([
            "--objects",
            &objects.to_string(),
            "--size",
            &SIZE.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect(
            "run the recipe31 example (build it with cargo build --release -p grafos-examples)",
        );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "recipe31 failed:\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains("events/s end to end"))
        .unwrap_or_else(|| panic!("no report in recipe31's output:\n{text}"));
    let number_before = |marker: &str| -> f64 {
        let head = &line[..line.find(marker).expect("marker")];
        head.split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .expect("a number")
    };
    let number_after = |marker: &str| -> u64 {
        let tail = &line[line.find(marker).expect("marker") + marker.len()..];
        tail.split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .expect("a number")
    };
    Run {
        events_per_sec: number_before("events/s"),
        p50_us: number_after("p50 "),
        p99_us: number_after("p99 "),
    }
}

/// How the Redis pipeline talks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Naive,
    Batched,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::Batched => "batched",
        }
    }

    fn parse(name: &str) -> Mode {
        match name {
            "naive" => Mode::Naive,
            "batched" => Mode::Batched,
            other => panic!("unknown mode {other}"),
        }
    }
}

fn connect(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .expect("redis url")
        .get_connection()
        .expect("connect to redis")
}

/// One Redis run: a clean database, the group, the workers, then the
/// producer; done once every result is there.
fn redis_run(addr: &str, mode: Mode, objects: u64, rate: u64) -> Run {
    let mut con = connect(addr);
    redis::cmd("FLUSHDB").exec(&mut con).expect("FLUSHDB");
    redis::cmd("XGROUP")
        .arg(&["CREATE", common::TOPIC, common::GROUP, "$", "MKSTREAM"])
        .exec(&mut con)
        .expect("XGROUP CREATE");
    let spawn = |role: &str, extra: &str| {
        self_exe()
            .args(["child", role, mode.name(), addr, extra, &rate.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a recipe 31 child")
    };
    let mut workers: Vec<_> = (0..WORKERS)
        .map(|i| spawn("r31-worker", &format!("worker-{i}")))
        .collect();
    // As the grafos producer waits for its group, this one starts once
    // every worker is connected and about to read (each adds itself to
    // `r31:ready`).
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let joined: u64 = redis::cmd("SCARD")
            .arg("r31:ready")
            .query(&mut con)
            .expect("SCARD");
        if joined >= u64::from(WORKERS) {
            break;
        }
        assert!(Instant::now() < ready, "the Redis workers did not join");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut producer = spawn("r31-producer", &objects.to_string());
    assert!(
        producer.wait().expect("producer").success(),
        "producer failed"
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: u64 = redis::cmd("HLEN")
            .arg(common::RESULTS)
            .query(&mut con)
            .expect("HLEN");
        if done >= objects {
            break;
        }
        assert!(Instant::now() < deadline, "Redis pipeline stuck at {done}");
        std::thread::sleep(Duration::from_millis(10));
    }
    redis::cmd("SET")
        .arg(&["r31:stop", "1"])
        .exec(&mut con)
        .expect("SET");
    for w in &mut workers {
        let mut line = String::new();
        BufReader::new(w.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("worker report");
        assert!(w.wait().expect("worker").success(), "worker failed: {line}");
    }
    let results: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(common::RESULTS)
        .query(&mut con)
        .expect("HGETALL");
    let mut latencies = Vec::with_capacity(results.len());
    let (mut first, mut last) = (u64::MAX, 0u64);
    for (key, text) in &results {
        let o = common::Outcome::parse(text).unwrap_or_else(|| panic!("bad result {key}: {text}"));
        let i = common::object_index(key).expect("object key");
        assert_eq!(
            o.crc,
            common::checksum(&common::object_body(i, SIZE)),
            "{key}: wrong checksum"
        );
        latencies.push(o.done_us.saturating_sub(o.put_us));
        first = first.min(o.put_us);
        last = last.max(o.done_us);
    }
    assert_eq!(results.len() as u64, objects);
    latencies.sort_unstable();
    Run {
        events_per_sec: objects as f64 / (last.saturating_sub(first) as f64 / 1e6).max(1e-9),
        p50_us: common::quantile(&latencies, 0.5),
        p99_us: common::quantile(&latencies, 0.99),
    }
}

/// The Redis producer: `args` = mode, address, objects, rate (objects/s,
/// 0: unpaced).
pub fn producer(args: &[String]) {
    let mode = Mode::parse(&args[0]);
    let mut con = connect(&args[1]);
    let objects: u64 = args[2].parse().expect("objects");
    let rate: u64 = args[3].parse().expect("rate");
    // Paced, one object per trip in both modes (a batch would hold the
    // first object back until the last is due).
    let batch = if mode == Mode::Batched && rate == 0 {
        BATCH as u64
    } else {
        1
    };
    let began = Instant::now();
    let mut i = 0;
    while i < objects {
        if rate > 0 {
            let due = began + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let mut pipe = redis::pipe();
        for j in i..(i + batch).min(objects) {
            let key = common::object_key(j);
            let uri = format!("fabric://redis/{}/{key}", common::OBJECTS);
            pipe.hset(common::OBJECTS, &key, common::object_body(j, SIZE))
                .ignore();
            if mode == Mode::Naive {
                // One command per round trip: the HSET, then the XADD.
                pipe.exec(&mut con).expect("HSET");
                pipe = redis::pipe();
            }
            pipe.cmd("XADD")
                .arg(common::TOPIC)
                .arg("*")
                .arg("uri")
                .arg(&uri)
                .arg("put_us")
                .arg(common::unix_us())
                .ignore();
        }
        pipe.exec(&mut con).expect("HSET + XADD");
        i += batch;
    }
}

/// A Redis worker: `args` = mode, address, consumer name. Prints how many
/// records it handled once told to stop.
pub fn worker(args: &[String]) {
    let mode = Mode::parse(&args[0]);
    let mut con = connect(&args[1]);
    let name = &args[2];
    let incarnation = format!("{name}/{}", std::process::id());
    let count = if mode == Mode::Batched { BATCH } else { 1 };
    let mut handled = 0u64;
    redis::cmd("SADD")
        .arg("r31:ready")
        .arg(name)
        .exec(&mut con)
        .expect("SADD");
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg(&["GROUP", common::GROUP, name])
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(10)
            .arg(&["STREAMS", common::TOPIC, ">"])
            .query(&mut con)
            .expect("XREADGROUP");
        let entries = stream_entries(reply);
        if entries.is_empty() {
            let stop: Option<String> = redis::cmd("GET")
                .arg("r31:stop")
                .query(&mut con)
                .expect("GET");
            if stop.is_some() {
                println!("handled {handled}");
                return;
            }
            continue;
        }
        let keys: Vec<String> = entries
            .iter()
            .map(|(_, uri, _)| uri.rsplit('/').next().expect("a key").to_string())
            .collect();
        let bodies: Vec<Vec<u8>> = if mode == Mode::Batched {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.hget(common::OBJECTS, key);
            }
            pipe.query(&mut con).expect("HGET")
        } else {
            vec![
                redis::cmd("HGET")
                    .arg(common::OBJECTS)
                    .arg(&keys[0])
                    .query(&mut con)
                    .expect("HGET"),
            ]
        };
        let mut pipe = redis::pipe();
        for ((id, _, put_us), (key, body)) in entries.iter().zip(keys.iter().zip(&bodies)) {
            let outcome = common::Outcome {
                crc: common::checksum(body),
                size: body.len() as u64,
                incarnation: incarnation.clone(),
                put_us: *put_us,
                done_us: common::unix_us(),
                runs: 1,
                redelivered: 0,
            };
            if mode == Mode::Naive {
                redis::cmd("HSET")
                    .arg(common::RESULTS)
                    .arg(key)
                    .arg(outcome.encode())
                    .exec(&mut con)
                    .expect("HSET");
                redis::cmd("XACK")
                    .arg(&[common::TOPIC, common::GROUP, id])
                    .exec(&mut con)
                    .expect("XACK");
            } else {
                pipe.hset(common::RESULTS, key, outcome.encode()).ignore();
            }
        }
        if mode == Mode::Batched {
            let ids: Vec<&str> = entries.iter().map(|(id, _, _)| id.as_str()).collect();
            pipe.cmd("XACK")
                .arg(common::TOPIC)
                .arg(common::GROUP)
                .arg(&ids)
                .ignore();
            pipe.exec(&mut con).expect("HSET + XACK");
        }
        handled += entries.len() as u64;
    }
}

/// `(id, uri, put_us)` of each entry of an `XREADGROUP` reply (nil on a
/// timeout: none).
fn stream_entries(reply: Value) -> Vec<(String, String, u64)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            panic!("a stream is [name, entries]")
        };
        let Some(Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(pair) = entry else {
                panic!("an entry is [id, fields]")
            };
            let Value::Array(fields) = &pair[1] else {
                panic!("fields are an array")
            };
            let (mut uri, mut put_us) = (String::new(), 0);
            for kv in fields.chunks(2) {
                match text(&kv[0]).as_str() {
                    "uri" => uri = text(&kv[1]),
                    "put_us" => put_us = text(&kv[1]).parse().expect("put_us"),
                    _ => {}
                }
            }
            out.push((text(&pair[0]), uri, put_us));
        }
    }
    out
}

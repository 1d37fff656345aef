//! The recipe 31 failover drill (`scripts/recipe31-failover.sh` runs it):
//! runs the producer and the worker group under `grafos run` on an
//! instance of its own, objects paced to last `--secs`, and while
//! notifications flow SIGKILLs group members at random moments (`grafos
//! kill worker.N`) and the producer a few times (`grafos kill producer`;
//! it resumes from its checkpoint). For each member killed it times the
//! failover: from the kill until no member is the dead process, every
//! partition is owned by a live member and each of the victim's
//! partitions is consuming again (its committed offset moved, or nothing
//! is left to read).
//!
//! Then it checks from outside the workers, with `grafos store ls
//! --checksum` over the objects and `grafos store ls --content` over the
//! results, that every object has exactly one result carrying the
//! object's checksum; kills (worker restarts) and rebalances (the group's
//! generation) come from `grafos status --json`, reprocessing from the
//! results' run counts. It takes the instance down and checks nothing of
//! it is left in `/dev/shm`.
//!
//! The last line reads `objects=N results=N missing=0 wrong=0 kills=K
//! rebalances=R reprocessed=P max_failover_ms=T`; the exit status is
//! non-zero if a result is missing or wrong, if fewer than `--kills`
//! members or `--producer-kills` producers were killed (at least 20 and
//! 2 by default), or if nothing was reprocessed. With `--table` it also
//! prints the failover times' distribution (the failover benchmark).

#[path = "../recipe31/common.rs"]
mod common;
#[path = "../drill.rs"]
mod drill;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use grafos_worker::mq::topic::{MemberDescription, TopicManager};

use drill::{Drill, Failure};

use common::{GROUP, Outcome, TOPIC};

/// Kill recipe 31's workers and producer while it runs; check that every
/// object has exactly one correct result; time each failover.
#[derive(Parser)]
#[command(about, long_about)]
struct Args {
    /// Objects the producer stores.
    #[arg(long, default_value_t = 100_000)]
    objects: u64,
    /// How long the producer takes to store them (it is paced).
    #[arg(long, default_value_t = 32)]
    secs: u64,
    /// SIGKILLs of group members (at random moments, random members).
    #[arg(long, default_value_t = 24)]
    kills: u32,
    /// SIGKILLs of the producer.
    #[arg(long, default_value_t = 2)]
    producer_kills: u32,
    /// Worker processes in the group.
    #[arg(long, default_value_t = 3)]
    workers: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Bytes per object.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Print the distribution of failover times (p50, p90, p99, max).
    #[arg(long)]
    table: bool,
    /// Give up after this long (below CI's own timeout, so the drill
    /// still takes its instance down).
    #[arg(long, default_value_t = 480)]
    timeout_secs: u64,
}

/// How long a failover may take before the drill gives up on it.
const FAILOVER_LIMIT: Duration = Duration::from_secs(10);
/// The fewest member kills and producer kills a passing run shows.
const MIN_MEMBER_KILLS: u32 = 20;
const MIN_PRODUCER_KILLS: u32 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let drill = match Drill::start("recipe31f", &["--pool-size", "2G"]) {
        Ok(drill) => drill,
        Err(e) => {
            eprintln!("recipe31-failover: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: no other thread runs yet, so none reads the environment.
    // The drill reads the topic itself to time failovers.
    unsafe {
        std::env::set_var("GRAFOS_INSTANCE", &drill.instance);
        std::env::set_var("GRAFOS_RUNTIME_DIR", &drill.root);
    }
    let outcome = run(&drill, &args);
    drill.finish("recipe31-failover");
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("recipe31-failover: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the blows did.
#[derive(Default)]
struct Blows {
    member_kills: u32,
    producer_kills: u32,
    /// Failover times of member kills, in ms.
    failovers: Vec<f64>,
}

fn run(drill: &Drill, args: &Args) -> Result<bool, Failure> {
    let topology = drill.root.join("work").join("recipe31.toml");
    let rate = (args.objects / args.secs.max(1)).max(1);
    std::fs::write(
        &topology,
        common::topology(
            &drill.bin.join("recipe31"),
            args.objects,
            args.size,
            rate,
            args.partitions,
            args.workers,
        ),
    )?;
    let mut run = drill
        .command(&drill.bin.join("grafos"))
        .arg("run")
        .arg(&topology)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    println!(
        "recipe31: {} objects at {rate}/s, {} worker processes over {} partitions; {} member kills and {} producer kills planned",
        args.objects, args.workers, args.partitions, args.kills, args.producer_kills
    );
    let result = disturb(drill, args, &mut run);
    if result.is_err() {
        // Our child: stop it (it stops the workers) rather than wait for a
        // pipeline that may be wedged.
        let _ = run.kill();
    }
    let status = run.wait()?;
    let mut errors = String::new();
    if let Some(mut stderr) = run.stderr.take() {
        std::io::Read::read_to_string(&mut stderr, &mut errors)?;
    }
    let blows = result?;
    if !status.success() {
        return Err(format!("grafos run failed: {}", errors.trim()).into());
    }
    verify(drill, args, &blows)
}

/// Kills members and the producer at random moments while
/// notifications flow, printing progress, until `grafos run` ends.
fn disturb(drill: &Drill, args: &Args, run: &mut Child) -> Result<Blows, Failure> {
    let topics = TopicManager::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let total = args.kills + args.producer_kills;
    let interval = Duration::from_millis(args.secs * 1000 / u64::from(total + 4));
    let mut rng = Rng(u64::from(std::process::id()) ^ common::unix_us());
    let mut blows = Blows::default();
    let mut next_blow = started + interval;
    let mut last_handled = 0;
    let mut last_progress = Instant::now();
    // The producer's kills come at these blows (spread over the run).
    let producer_at: BTreeSet<u32> = (1..=args.producer_kills)
        .map(|k| k * total / (args.producer_kills + 1))
        .collect();
    while run.try_wait()?.is_none() {
        if Instant::now() > deadline {
            return Err("the pipeline did not finish in time".into());
        }
        if drill.interrupted() {
            return Err("interrupted".into());
        }
        std::thread::sleep(Duration::from_millis(20));
        let Ok(d) = topics.describe(TOPIC) else {
            continue;
        };
        let Some(g) = common::processors(&d) else {
            continue;
        };
        let handled: u64 = g.committed.iter().sum();
        let notified: u64 = d.partitions.iter().map(|p| p.head).sum();
        if last_progress.elapsed() >= Duration::from_secs(2) {
            println!(
                "  {:5.1} s  notified {notified:6}  handled {handled:6}  member kills {:2}  producer kills {}  generation {}",
                started.elapsed().as_secs_f64(),
                blows.member_kills,
                blows.producer_kills,
                g.coordination.generation
            );
            last_progress = Instant::now();
        }
        // Only while records are in flight: handled moved since the
        // last blow and not everything is handled.
        let in_flight = handled > last_handled && handled < args.objects;
        let blown = blows.member_kills + blows.producer_kills;
        if Instant::now() < next_blow || !in_flight || blown >= total {
            continue;
        }
        // Random moments: the next blow comes after half to one and a
        // half intervals.
        next_blow = Instant::now() + interval.mul_f64(0.5 + rng.unit());
        last_handled = handled;
        let producing = notified < args.objects;
        if (producer_at.contains(&blown) || blows.member_kills >= args.kills) && producing {
            drill.grafos(&["kill", "producer"])?;
            blows.producer_kills += 1;
            println!(
                "  {:5.1} s  killed the producer",
                started.elapsed().as_secs_f64()
            );
        } else if blows.member_kills < args.kills {
            let owners: Vec<&MemberDescription> = g
                .members
                .iter()
                .filter(|m| !m.partitions.is_empty())
                .collect();
            if owners.is_empty() {
                continue;
            }
            let name = owners[rng.below(owners.len() as u64) as usize].name.clone();
            // The kill lands while records are in flight for the victim.
            let Some(victim) = in_flight_member(&topics, &name)? else {
                continue;
            };
            let victim = &victim;
            let ms = kill_member(drill, &topics, victim)?;
            blows.member_kills += 1;
            blows.failovers.push(ms);
            println!(
                "  {:5.1} s  killed {} (pid {}, partitions {:?}): failover {ms:.1} ms",
                started.elapsed().as_secs_f64(),
                victim.name,
                victim.pid,
                victim.partitions
            );
        }
    }
    println!(
        "  done in {:.1} s: {} member kills, {} producer kills",
        started.elapsed().as_secs_f64(),
        blows.member_kills,
        blows.producer_kills
    );
    Ok(blows)
}

/// Member `name` as soon as records wait uncommitted in one of its
/// partitions (looked at every 0.2 ms for half a second); `None` if that
/// did not happen.
fn in_flight_member(
    topics: &TopicManager,
    name: &str,
) -> Result<Option<MemberDescription>, Failure> {
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let d = topics.describe(TOPIC)?;
        let g = common::processors(&d).ok_or("no group")?;
        if let Some(m) = g.members.iter().find(|m| m.name == name)
            && m.partitions.iter().any(|&p| d.lag(g, p as usize) > 0)
        {
            return Ok(Some(m.clone()));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(None)
}

/// SIGKILLs group member `victim` (which owns partitions) and times its
/// failover in ms: from just before `grafos kill` until the dead process
/// is gone from the group, every partition is owned by a live member, and
/// each partition the victim owned has committed past where it stood when
/// it was reassigned (or has nothing left to read).
fn kill_member(
    drill: &Drill,
    topics: &TopicManager,
    victim: &MemberDescription,
) -> Result<f64, Failure> {
    let killed_at = Instant::now();
    drill.grafos(&["kill", &victim.name])?;
    // Committed offsets of the victim's partitions once they moved.
    let mut reassigned: Option<BTreeMap<u32, u64>> = None;
    while killed_at.elapsed() < FAILOVER_LIMIT {
        let d = topics.describe(TOPIC)?;
        let g = common::processors(&d).ok_or("no group")?;
        let at = |p: u32| g.committed[p as usize];
        match &reassigned {
            None => {
                let owners: Vec<u32> = g
                    .members
                    .iter()
                    .flat_map(|m| m.partitions.clone())
                    .collect();
                let all_owned = (0..d.partitions.len() as u32).all(|p| owners.contains(&p));
                if all_owned && g.members.iter().all(|m| m.pid != victim.pid) {
                    reassigned = Some(victim.partitions.iter().map(|&p| (p, at(p))).collect());
                }
            }
            Some(then) => {
                let consuming = then
                    .iter()
                    .all(|(&p, &was)| at(p) > was || d.lag(g, p as usize) == 0);
                if consuming {
                    return Ok(killed_at.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Err(format!(
        "{}'s partitions did not fail over within {FAILOVER_LIMIT:?}",
        victim.name
    )
    .into())
}

/// Checks every object's result from outside and prints the verdict.
fn verify(drill: &Drill, args: &Args, blows: &Blows) -> Result<bool, Failure> {
    let base = format!("fabric://{}", drill.instance);
    let objects = listing(drill, &format!("{base}/{}/", common::OBJECTS), "--checksum")?;
    let results = listing(drill, &format!("{base}/{}/", common::RESULTS), "--content")?;
    let (mut missing, mut wrong, mut reprocessed, mut renotified) = (0u64, 0, 0, 0);
    for i in 0..args.objects {
        let key = common::object_key(i);
        let expected = format!(
            "crc32:{:08x}",
            common::checksum(&common::object_body(i, args.size))
        );
        match (objects.get(&key), results.get(&key)) {
            (Some(crc), Some(text)) => {
                let outcome = Outcome::parse(&unescape(text));
                match outcome {
                    Some(o)
                        if *crc == expected
                            && format!("crc32:{:08x}", o.crc) == *crc
                            && o.size == args.size as u64
                            && is_incarnation(&o.incarnation, args.workers) =>
                    {
                        reprocessed += u64::from(o.redelivered);
                        renotified += u64::from(o.runs.saturating_sub(1 + o.redelivered));
                    }
                    _ => wrong += 1,
                }
            }
            _ => missing += 1,
        }
    }
    // A result for no object of the run is wrong too.
    wrong += results
        .keys()
        .filter(|k| common::object_index(k).is_none_or(|i| i >= args.objects))
        .count() as u64;
    let status = drill.status()?;
    let workers = status["workers"]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let restarts = |prefix: &str| -> u64 {
        workers
            .iter()
            .filter(|w| w["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
            .filter_map(|w| w["restarts"].as_u64())
            .sum()
    };
    let (member_restarts, producer_restarts) = (restarts("worker"), restarts("producer"));
    let group = status["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == TOPIC)
        .flat_map(|t| t["groups"].as_array().cloned().unwrap_or_default())
        .find(|g| g["name"] == GROUP)
        .unwrap_or_default();
    let rebalances = group["generation"].as_u64().unwrap_or(0);
    let mut failovers = blows.failovers.clone();
    failovers.sort_by(f64::total_cmp);
    let max_failover = failovers.last().copied().unwrap_or(0.0);
    println!(
        "group {GROUP}: member restarts {member_restarts}, producer restarts {producer_restarts}, evicted dead {}, evicted silent {}, partition moves {}",
        group["evicted_dead"], group["evicted_silent"], group["moved"]
    );
    if args.table {
        print_failovers(&failovers);
    }
    println!(
        "results: {reprocessed} notifications handled again by a new owner, {renotified} notified again by a resumed producer"
    );
    let errors = process_errors(drill);
    if !errors.is_empty() {
        println!("worker and producer errors (each ended its process):");
        for line in &errors {
            println!("  {line}");
        }
    }
    let kills = member_restarts + producer_restarts;
    let mut problems = Vec::new();
    if missing > 0 || wrong > 0 {
        problems.push(format!("{missing} results missing, {wrong} wrong"));
    }
    if blows.member_kills < MIN_MEMBER_KILLS || blows.producer_kills < MIN_PRODUCER_KILLS {
        problems.push(format!(
            "{} member and {} producer kills (at least {MIN_MEMBER_KILLS} and {MIN_PRODUCER_KILLS})",
            blows.member_kills, blows.producer_kills
        ));
    }
    // Every restart is one of our kills: a process that died on its own
    // (an error) would hide behind the kill count otherwise.
    if member_restarts != u64::from(blows.member_kills)
        || producer_restarts != u64::from(blows.producer_kills)
        || !errors.is_empty()
    {
        problems.push(format!(
            "{member_restarts} member and {producer_restarts} producer restarts for {} and {} kills",
            blows.member_kills, blows.producer_kills
        ));
    }
    if reprocessed == 0 {
        problems.push(
            "no notification was handled again by a new owner: the drill proved nothing".into(),
        );
    }
    for problem in &problems {
        eprintln!("recipe31-failover: {problem}");
    }
    println!(
        "objects={} results={} missing={missing} wrong={wrong} kills={kills} rebalances={rebalances} reprocessed={reprocessed} max_failover_ms={max_failover:.0}",
        objects.len(),
        results.len()
    );
    std::io::stdout().flush()?;
    Ok(problems.is_empty())
}

/// `grafos store ls PREFIX FLAG`: key -> the column FLAG added.
fn listing(drill: &Drill, prefix: &str, flag: &str) -> Result<BTreeMap<String, String>, Failure> {
    let text = drill.grafos(&["store", "ls", prefix, flag])?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut cols = line.splitn(3, '\t');
        let (Some(uri), Some(_size), Some(extra)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(format!("grafos store ls: odd line {line:?}").into());
        };
        let key = uri.rsplit('/').next().unwrap_or_default().to_string();
        if out.insert(key, extra.to_string()).is_some() {
            return Err(format!("grafos store ls listed {uri} twice").into());
        }
    }
    Ok(out)
}

/// Whether `text` is `worker.N/PID` for one of the `workers` members.
fn is_incarnation(text: &str, workers: u32) -> bool {
    let Some((member, pid)) = text.split_once('/') else {
        return false;
    };
    let replica = member
        .strip_prefix("worker.")
        .and_then(|n| n.parse::<u32>().ok());
    replica.is_some_and(|n| n < workers) && pid.parse::<u32>().is_ok()
}

/// Error lines the producer and workers left in the supervisor's log.
fn process_errors(drill: &Drill) -> Vec<String> {
    let log = drill.root.join(&drill.instance).join("supervisor.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("recipe31: "))
        .map(str::to_owned)
        .collect()
}

/// The distribution of failover times.
fn print_failovers(sorted: &[f64]) {
    let q = |p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "failover (SIGKILL of a member -> its partitions owned by live members and consuming):"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "kills", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    println!(
        "{:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        sorted.len(),
        q(0.0),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
}

/// Undoes `grafos store ls --content`'s escapes.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A small xorshift generator for the blows' moments and victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

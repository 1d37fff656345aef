//! The recipe 8 failover drill (`scripts/recipe8-failover.sh` runs it):
//! runs the four-stage pipeline under `grafos run` on an instance of its
//! own, and while events flow SIGKILLs the stages in turn (`grafos
//! kill`), poisons live edge segments and expires one (`grafos lease
//! poison|expire`). Then it checks the sink file from outside the
//! pipeline, takes the counts of kills, relocations and redeliveries from
//! `grafos status --json`, takes the instance down and checks that nothing
//! of it is left in `/dev/shm`.
//!
//! The last line reads `events=N stored=N missing=0 duplicates=0
//! suppressed=S kills=K relocations=M`; the exit status is non-zero if an
//! event is missing or stored twice, or if K < 20, M < 3 or S = 0.

#[path = "../drill.rs"]
mod drill;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use drill::{Drill, Failure, counter};

/// Kill and poison recipe 8 while it runs; check that every event is
/// stored exactly once.
#[derive(Parser)]
#[command(about, long_about)]
struct Args {
    /// Events to send through the pipeline.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// How long the ingest stage takes to send them (it is paced).
    #[arg(long, default_value_t = 32)]
    secs: u64,
    /// SIGKILLs to deliver, round-robin over the four stages.
    #[arg(long, default_value_t = 24)]
    kills: u32,
    /// Live edge segments to poison.
    #[arg(long, default_value_t = 4)]
    poisons: u32,
    /// Give up after this long (below CI's own timeout, so the drill
    /// still takes its instance down).
    #[arg(long, default_value_t = 480)]
    timeout_secs: u64,
}

/// The fewest kills, relocations and suppressed duplicates a passing run
/// shows.
const MIN_KILLS: u64 = 20;
const MIN_RELOCATIONS: u64 = 3;
const STAGES: u32 = 4;

fn main() -> ExitCode {
    let args = Args::parse();
    let drill = match Drill::start("recipe8f", &[]) {
        Ok(drill) => drill,
        Err(e) => {
            eprintln!("recipe8-failover: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = run(&drill, &args);
    drill.finish("recipe8-failover");
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("recipe8-failover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sink(drill: &Drill) -> PathBuf {
    drill.root.join("work").join("sink")
}

fn run(drill: &Drill, args: &Args) -> Result<bool, Failure> {
    let file = drill.root.join("work").join("recipe8.toml");
    let rate = (args.events / args.secs.max(1)).max(1);
    std::fs::write(&file, topology(drill, args.events, rate))?;
    let mut run = drill
        .command(&drill.bin.join("grafos"))
        .arg("run")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    println!(
        "recipe8: {} events at {rate}/s through 4 stage processes; {} kills and {} poisoned segments planned",
        args.events, args.kills, args.poisons
    );
    let result = disturb(drill, args, &mut run);
    let status = run.wait()?;
    let mut errors = String::new();
    if let Some(mut stderr) = run.stderr.take() {
        std::io::Read::read_to_string(&mut stderr, &mut errors)?;
    }
    result?;
    if !status.success() {
        return Err(format!("grafos run failed: {}", errors.trim()).into());
    }
    verify(drill, args.events)
}

fn topology(drill: &Drill, events: u64, rate: u64) -> String {
    format!(
        r#"[supervision]
strategy = "one_for_one"
max_restarts = 1000
period_secs = 60
shutdown_grace_secs = 5

[[worker]]
name = "recipe8"
command = "{}"
args = ["--events", "{events}", "--rate", "{rate}", "--out", "{}"]
replicas = {STAGES}
restart = "transient"
env = {{ RUST_LOG = "warn" }}
"#,
        drill.bin.join("recipe8").display(),
        sink(drill).display()
    )
}

/// Kills stages and poisons edges while events flow, printing
/// progress, until `grafos run` ends.
fn disturb(drill: &Drill, args: &Args, run: &mut Child) -> Result<(), Failure> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let interval = Duration::from_millis(args.secs * 1000 / u64::from(args.kills + 4));
    let poison_every = (args.kills / args.poisons.max(1)).max(1);
    let (mut kills, mut poisons, mut expired) = (0u32, 0u32, false);
    let mut last_stored = 0;
    let mut last_progress = Instant::now();
    let mut next_kill = Instant::now() + interval;
    // When the sink count moved, and what was done when.
    let mut progress = Vec::new();
    let mut blows = Vec::new();
    while run.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = run.kill();
            return Err("the pipeline did not finish in time".into());
        }
        if drill.interrupted() {
            let _ = run.kill();
            return Err("interrupted".into());
        }
        std::thread::sleep(Duration::from_millis(50));
        let stored = count_lines(&sink(drill));
        if progress.last().is_none_or(|&(_, n)| n != stored) {
            progress.push((started.elapsed(), stored));
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            let status = drill.status()?;
            println!(
                "  {:5.1} s  stored {stored:6}  kills {kills:2}  relocations {:2}  rebinds {:2}  redeliveries {}",
                started.elapsed().as_secs_f64(),
                counter(&status, "edge_relocations"),
                counter(&status, "edge_rebinds"),
                counter(&status, "redeliveries")
            );
            last_progress = Instant::now();
        }
        // Only while events are in flight: the sink moved since the
        // last blow and has not got them all (blows near the end hit
        // stages as the end of the stream passes through them).
        let in_flight = stored > last_stored && stored < args.events;
        if Instant::now() < next_kill || !in_flight {
            continue;
        }
        next_kill = Instant::now() + interval;
        last_stored = stored;
        if kills < args.kills {
            let worker = format!("recipe8.{}", kills % STAGES);
            drill.grafos(&["kill", &worker])?;
            kills += 1;
            blows.push((started.elapsed(), format!("kill {worker}")));
            if kills.is_multiple_of(poison_every) && poisons < args.poisons {
                if let Some(lease) = live_edge_lease(drill)? {
                    drill.grafos(&["lease", "poison", &lease.to_string()])?;
                    blows.push((started.elapsed(), format!("poison lease {lease}")));
                    poisons += 1;
                }
            } else if kills == poison_every + poison_every / 2
                && !expired
                && let Some(lease) = live_edge_lease(drill)?
            {
                drill.grafos(&["lease", "expire", &lease.to_string()])?;
                blows.push((started.elapsed(), format!("expire lease {lease}")));
                expired = true;
            }
        }
    }
    println!(
        "  done in {:.1} s: {kills} kills, {poisons} segments poisoned, {} expired",
        started.elapsed().as_secs_f64(),
        u32::from(expired)
    );
    print_dips(&progress, &blows);
    Ok(())
}

/// The newest active memory lease: an edge segment in use.
fn live_edge_lease(drill: &Drill) -> Result<Option<u64>, Failure> {
    let status = drill.status()?;
    Ok(status["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["kind"] == "mem" && l["state"] == "active")
        .filter_map(|l| l["id"].as_u64())
        .max())
}

/// Checks the sink from outside and prints the verdict.
fn verify(drill: &Drill, events: u64) -> Result<bool, Failure> {
    let text = std::fs::read_to_string(sink(drill))?;
    let mut unique = HashSet::new();
    let mut duplicates = 0u64;
    for line in text.lines() {
        let id: u64 = line.parse().map_err(|_| format!("sink line {line:?}"))?;
        if id >= events {
            return Err(format!("sink holds unknown event {id}").into());
        }
        if !unique.insert(id) {
            duplicates += 1;
        }
    }
    let stored = unique.len() as u64;
    let missing = events - stored;
    let suppressed = count_lines(&sink(drill).with_extension("suppressed"));
    let status = drill.status()?;
    let kills: u64 = status["workers"]["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["restarts"].as_u64())
        .sum();
    let relocations = counter(&status, "edge_relocations");
    println!(
        "sink took={} rebinds={} generation_changes={relocations} redeliveries={} carried={} lost={}",
        count_lines(&sink(drill)) + suppressed,
        counter(&status, "edge_rebinds"),
        counter(&status, "redeliveries"),
        counter(&status, "edge_records_carried"),
        counter(&status, "edge_records_lost")
    );
    let log = drill.root.join(&drill.instance).join("supervisor.log");
    let stage_errors: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("recipe8: ") && !l.contains("stage done"))
        .map(str::to_owned)
        .collect();
    if !stage_errors.is_empty() {
        println!("stage errors (each ended its process, which was restarted):");
        for line in &stage_errors {
            println!("  {line}");
        }
    }
    let mut problems = Vec::new();
    if missing > 0 || duplicates > 0 {
        problems.push(format!("{missing} missing, {duplicates} stored twice"));
    }
    if kills < MIN_KILLS {
        problems.push(format!("only {kills} kills (at least {MIN_KILLS})"));
    }
    if relocations < MIN_RELOCATIONS {
        problems.push(format!(
            "only {relocations} relocations (at least {MIN_RELOCATIONS})"
        ));
    }
    if suppressed == 0 {
        problems.push("no duplicate was suppressed: the drill proved nothing".into());
    }
    for problem in &problems {
        eprintln!("recipe8-failover: {problem}");
    }
    println!(
        "events={events} stored={stored} missing={missing} duplicates={duplicates} suppressed={suppressed} kills={kills} relocations={relocations}"
    );
    std::io::stdout().flush()?;
    Ok(problems.is_empty())
}

/// For each blow, the longest the sink stood still in the two seconds
/// after it (sampled every 50 ms; the paced stream moves every
/// millisecond or so), and the rate over that second.
fn print_dips(progress: &[(Duration, u64)], blows: &[(Duration, String)]) {
    println!("throughput dips (longest sink stall within 2 s of each blow, and the rate then):");
    for (at, what) in blows {
        let window: Vec<_> = progress
            .iter()
            .filter(|(t, _)| *t >= *at && *t <= *at + Duration::from_secs(2))
            .collect();
        let stall = window
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        let moved = match (window.first(), window.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        };
        println!(
            "  {:5.1} s  {what:22}  stalled {:4} ms  {moved:6.0} events/s",
            at.as_secs_f64(),
            stall.as_millis()
        );
    }
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |bytes| {
        bytes.iter().filter(|&&b| b == b'\n').count() as u64
    })
}

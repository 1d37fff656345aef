//! Recipe 8: a stream pipeline that rewires around failures.
//!
//! ingest -> parse -> enrich -> store, four stages joined by relocatable
//! edges. Under `grafos run` (see `examples/recipe8/topology.toml`) each
//! stage is a worker process, `recipe8.0` to `recipe8.3`, all running
//! this program; without a worker id the four run as threads.
//!
//! Each stage checkpoints its input position after forwarding what it
//! read and commits its input edge after that (`stream::Pipeline` does
//! both), so a stage killed at any moment restarts, re-reads what it had
//! not checkpointed, and skips what it had. What it forwarded twice
//! reaches the store stage twice: the sink is a file of event ids that
//! skips ids it holds already (logged in `OUT.suppressed`), so every event
//! is stored exactly once. A store stage that ends normally appends what
//! it stored and suppressed to `OUT.summary`.
//!
//! `scripts/recipe8-failover.sh` runs it with SIGKILLs and poisoned edge
//! segments and checks the sink from outside.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use grafos_worker::FabricError;
use grafos_worker::host::unix_time_ms as now_ms;
use grafos_worker::stream::Pipeline;

/// Run recipe 8's pipeline (one stage per `grafos run` worker, or all as
/// threads).
#[derive(Parser)]
#[command(about, long_about)]
struct Args {
    /// Events the ingest stage produces (ids 0 to N-1).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events per second the ingest stage produces at most (0: as fast
    /// as the pipeline takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The sink file (one stored event id per line); `OUT.suppressed`
    /// and `OUT.summary` go beside it.
    #[arg(long, default_value = "recipe8-sink.txt")]
    out: PathBuf,
    /// Bytes of each edge's shared-memory lease.
    #[arg(long, default_value_t = 256 << 10)]
    edge_bytes: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recipe8: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), FabricError> {
    let source = Ingest::new(args)?;
    // Opened by the store stage on its first event only.
    let out = args.out.clone();
    let mut sink: Option<Sink> = None;
    let report = Pipeline::from_source(source)
        .named("recipe8")
        .edge_bytes(args.edge_bytes)
        .map(parse)
        .map(enrich)
        .sink(move |event: String| {
            if sink.is_none() {
                sink = Some(Sink::open(&out)?);
            }
            sink.as_mut().expect("just opened").store(&event)
        })
        .run()?;
    if report.sourced > 0 || report.sunk > 0 {
        eprintln!(
            "recipe8: stage done: sourced {} stored-or-suppressed {} rebinds {} relocations {} redeliveries {}",
            report.sourced,
            report.sunk,
            report.edges.rebinds,
            report.edges.relocations,
            report.edges.redeliveries
        );
    }
    Ok(())
}

/// The ingest stage's events: `id,sensor,reading`, paced by a clock that
/// starts with the first run (so a restarted ingest catches up at once).
struct Ingest {
    next: u64,
    events: u64,
    rate: u64,
    start_ms: u64,
}

impl Ingest {
    fn new(args: &Args) -> Result<Ingest, FabricError> {
        Ok(Ingest {
            next: 0,
            events: args.events,
            rate: args.rate,
            start_ms: pacing_start(&args.out)?,
        })
    }
}

impl Iterator for Ingest {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.next == self.events {
            return None;
        }
        let id = self.next;
        self.next += 1;
        if let Some(offset) = (id * 1000).checked_div(self.rate) {
            let due = self.start_ms + offset;
            let now = now_ms();
            if due > now {
                std::thread::sleep(Duration::from_millis(due - now));
            }
        }
        Some(format!("{id},sensor-{},{}", id % 17, id * 7 % 1000))
    }
}

/// When the first ingest started, kept in `OUT.start`.
fn pacing_start(out: &Path) -> Result<u64, FabricError> {
    let path = with_suffix(out, "start");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(ms) = text.trim().parse()
    {
        return Ok(ms);
    }
    let now = now_ms();
    std::fs::write(&path, now.to_string()).map_err(|e| FabricError::from_io(&e))?;
    Ok(now)
}

/// `id,sensor,reading` -> `id|sensor|reading`.
fn parse(raw: String) -> String {
    raw.replace(',', "|")
}

/// Adds the sensor's zone and a calibrated reading.
fn enrich(parsed: String) -> String {
    let mut fields = parsed.split('|');
    let (id, sensor, reading) = (fields.next(), fields.next(), fields.next());
    let zone = sensor.map_or(0, |s| s.len() % 4);
    let calibrated = reading.and_then(|r| r.parse::<f64>().ok()).unwrap_or(0.0) * 1.5;
    format!(
        "{}|{}|zone-{zone}|{calibrated:.1}",
        id.unwrap_or(""),
        sensor.unwrap_or("")
    )
}

/// The idempotent sink: a file of event ids that skips the ones it holds.
struct Sink {
    out: PathBuf,
    stored: File,
    suppressed: File,
    seen: HashSet<u64>,
    started: Instant,
    newly_stored: u64,
    newly_suppressed: u64,
}

impl Sink {
    fn open(out: &Path) -> Result<Sink, FabricError> {
        let io = |e: std::io::Error| FabricError::from_io(&e);
        let seen = load_ids(out).map_err(io)?;
        let append = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io)
        };
        Ok(Sink {
            out: out.to_path_buf(),
            stored: append(out)?,
            suppressed: append(&with_suffix(out, "suppressed"))?,
            seen,
            started: Instant::now(),
            newly_stored: 0,
            newly_suppressed: 0,
        })
    }

    fn store(&mut self, event: &str) -> Result<(), FabricError> {
        let id: u64 = event
            .split('|')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| FabricError::Codec(format!("no event id in {event:?}")))?;
        let io = |e: std::io::Error| FabricError::from_io(&e);
        // One write per line: a killed process leaves whole lines.
        if self.seen.insert(id) {
            self.stored
                .write_all(format!("{id}\n").as_bytes())
                .map_err(io)?;
            self.newly_stored += 1;
        } else {
            self.suppressed
                .write_all(format!("{id}\n").as_bytes())
                .map_err(io)?;
            self.newly_suppressed += 1;
        }
        Ok(())
    }
}

impl Drop for Sink {
    /// Writes the summary of this incarnation of the store stage.
    fn drop(&mut self) {
        let summary = format!(
            "stored {} suppressed {} in {:.1} s\n",
            self.newly_stored,
            self.newly_suppressed,
            self.started.elapsed().as_secs_f64(),
        );
        let path = with_suffix(&self.out, "summary");
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(summary.as_bytes());
        }
    }
}

/// The ids in the sink file; a last line without its newline (a write
/// cut short) is cut off the file.
fn load_ids(out: &Path) -> std::io::Result<HashSet<u64>> {
    let bytes = match std::fs::read(out) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        OpenOptions::new()
            .write(true)
            .open(out)?
            .set_len(whole as u64)?;
    }
    let text = String::from_utf8_lossy(&bytes[..whole]);
    text.lines()
        .map(|line| {
            line.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not an event id: {line:?}", out.display()),
                )
            })
        })
        .collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

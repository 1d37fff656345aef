//! `grafos`: the command-line tool of the grafos shared-memory fabric.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use grafos_runtime::supervisor::Config;
use grafos_runtime::up::Down;
use grafos_runtime::{status, up};
use grafos_worker::FabricError;
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::control::{Connection, Request};
use grafos_worker::edge::EdgeLog;
use grafos_worker::instance::InstancePaths;
use grafos_worker::layout::header::{Expect, SegmentKind};
use grafos_worker::segment::{Segment, SegmentName, list_segments};

mod store_cli;
mod topic_cli;

/// grafos: a shared-memory fabric for multi-process pipelines on one host.
///
/// A supervisor (`grafos up`) leases out shared-memory segments and block
/// files from a budget; worker processes exchange records through
/// lock-free logs and queues in those segments
/// (`/dev/shm/grafos.<instance>.*`). Logs go to stderr, filtered by
/// RUST_LOG (default `info` for `up`, `warn` otherwise).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Instance to act on.
    #[arg(
        long,
        global = true,
        env = "GRAFOS_INSTANCE",
        default_value = "default"
    )]
    instance: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the instance's supervisor (in the foreground unless
    /// --detach).
    ///
    /// Makes the runtime dir with the control socket (0600), the registry
    /// and counters segments, and serves lease requests until `grafos down`
    /// or SIGTERM/SIGINT. Refuses if the instance is up already; a stale
    /// socket or registry of a dead supervisor is taken over.
    Up {
        /// Shared-memory budget (bytes; K, M, G suffixes are powers of 1024).
        #[arg(long, default_value = "1G", value_parser = parse_bytes)]
        pool_size: u64,
        /// Block-storage budget (bytes; K, M, G suffixes).
        #[arg(long, default_value = "1G", value_parser = parse_bytes)]
        block_pool_size: u64,
        /// Where block leases' files go (default: the runtime dir's `data`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seconds an expired lease stays readable before it is unlinked
        /// (at most a day).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
        grace_secs: u64,
        /// Seconds a queue claim may stay unfinished while its holder is
        /// stopped (SIGSTOP, a debugger) before the holder is killed and the
        /// claim repaired.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        claim_age_limit: u64,
        /// Run in the background; exit 0 once it accepts requests.
        #[arg(long)]
        detach: bool,
    },
    /// Stop the instance: expire every lease, remove every segment, the
    /// socket and the runtime dir. Cleans up after a dead supervisor too.
    Down,
    /// Show the pool, leases, participants, queues, hash maps and counters.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Start the workers of a topology file under the supervisor and
    /// follow them until they stop (Ctrl-C stops them).
    ///
    /// Starts the instance first if it is not up (and takes it down at the
    /// end). Workers start in file order, each in its own process group
    /// with GRAFOS_INSTANCE and GRAFOS_WORKER_ID set; they are restarted by
    /// the file's strategy (one_for_one, one_for_all, rest_for_one),
    /// restart type (permanent, transient, temporary) and intensity
    /// (max_restarts within period_secs), and stopped in reverse order:
    /// SIGTERM, then SIGKILL after shutdown_grace_secs. Exits 0 if every
    /// worker finished or the group was stopped on request, 1 otherwise.
    Run {
        /// The topology file (TOML; see the README).
        topology: PathBuf,
    },
    /// Send a signal to a worker of the running topology (a failover
    /// drill; SIGKILL unless --signal says otherwise).
    Kill {
        /// The worker id (`name`, or `name.N` for replicas).
        worker: String,
        /// Signal name (KILL, TERM, INT, HUP, STOP, CONT, USR1, USR2, QUIT,
        /// ABRT, with or without SIG) or number.
        #[arg(long, default_value = "KILL", value_parser = parse_signal)]
        signal: i32,
    },
    /// Failover drills on a lease.
    Lease {
        #[command(subcommand)]
        action: LeaseAction,
    },
    /// List the instance's segments with their kind, size, fence state and,
    /// for edge logs and queues, positions and repair counts.
    ///
    /// Every header is validated; a segment that fails validation is listed
    /// with the reason instead of its fields.
    Segments,
    /// The instance's object store: put, get, ls, rm by
    /// `fabric://<instance>/<bucket>/<key>` (the URI names the instance).
    Store {
        #[command(subcommand)]
        action: store_cli::StoreAction,
    },
    /// The instance's topics: create, describe (head, tail and group lag
    /// per partition), tail (print records), ls, delete.
    Topic {
        #[command(subcommand)]
        action: topic_cli::TopicAction,
    },
}

#[derive(Subcommand)]
enum LeaseAction {
    /// Expire the lease now: handles get `LeaseExpired`; the segment stays
    /// readable for the grace period, then goes.
    Expire {
        /// Lease id (see `grafos status`).
        id: u64,
    },
    /// Poison the lease now: handles get `LeasePoisoned`.
    Poison {
        /// Lease id.
        id: u64,
    },
}

/// Parses a signal name (`KILL`, `SIGTERM`, ...) or number.
fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n} is not 1 to 64"))
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    grafos_runtime::group::SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, number)| number)
        .ok_or_else(|| format!("unknown signal {text:?}"))
}

/// Parses `4096`, `64K`, `256M`, `1G` (also `KiB`, `MiB`, `GiB`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count like 4096, 64K, 256M or 1G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?} is zero or too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = if matches!(cli.command, Command::Up { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let paths = match InstancePaths::new(&cli.instance) {
        Ok(paths) => paths,
        Err(e) => {
            // A usage error, as clap reports its own.
            eprintln!("grafos: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Up {
            pool_size,
            block_pool_size,
            data_dir,
            grace_secs,
            claim_age_limit,
            detach,
        } => {
            if detach {
                let mut args = vec![
                    "up".to_owned(),
                    format!("--pool-size={pool_size}"),
                    format!("--block-pool-size={block_pool_size}"),
                    format!("--grace-secs={grace_secs}"),
                    format!("--claim-age-limit={claim_age_limit}"),
                ];
                if let Some(dir) = &data_dir {
                    args.push(format!("--data-dir={}", dir.display()));
                }
                up::detach(&paths, &args).map(|pid| {
                    println!(
                        "instance {:?} is up: supervisor pid {pid}, socket {}, log {}",
                        paths.instance(),
                        paths.socket().display(),
                        paths.log_file().display()
                    );
                })
            } else {
                let config = Config {
                    pool_size,
                    block_pool_size,
                    data_dir: data_dir.unwrap_or_else(|| paths.default_data_dir()),
                    grace: Duration::from_secs(grace_secs),
                    claim_age_limit: Duration::from_secs(claim_age_limit),
                };
                up::run_foreground(&paths, config, |_| {
                    tracing::info!(
                        instance = paths.instance(),
                        socket = %paths.socket().display(),
                        pool_size,
                        block_pool_size,
                        "supervisor ready"
                    );
                })
            }
        }
        Command::Down => up::down(&paths).map(|outcome| match outcome {
            Down::Stopped { pid } => {
                println!(
                    "instance {:?} is down (supervisor pid {pid} exited)",
                    paths.instance()
                );
            }
            Down::CleanedUp => println!(
                "instance {:?} had no running supervisor; removed what it left",
                paths.instance()
            ),
            Down::NothingThere => println!("instance {:?} is not up", paths.instance()),
        }),
        Command::Status { json } => match status::read(&paths) {
            Ok(s) if json => {
                emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&s).expect("status serialises")
                ));
                Ok(())
            }
            Ok(s) => {
                emit(&status::render(&s));
                Ok(())
            }
            Err(FabricError::NotFound(_)) => Err(format!(
                "instance {:?} is not up (no registry segment); start it with `grafos up`",
                paths.instance()
            )),
            Err(e) => Err(e.to_string()),
        },
        Command::Run { topology } => match grafos_runtime::run::run(&paths, &topology) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Kill { worker, signal } => Connection::connect(paths.instance(), &paths.socket())
            .and_then(|c| {
                c.call(&Request::Kill {
                    worker: worker.clone(),
                    signal,
                })
            })
            .map(|_| println!("signal {signal} sent to worker {worker}"))
            .map_err(|e| e.to_string()),
        Command::Lease { action } => {
            let (request, done) = match action {
                LeaseAction::Expire { id } => (Request::Expire { lease_id: id }, "expired"),
                LeaseAction::Poison { id } => (Request::Poison { lease_id: id }, "poisoned"),
            };
            Connection::connect(paths.instance(), &paths.socket())
                .and_then(|c| c.call(&request))
                .map(|_| println!("lease {done}"))
                .map_err(|e| e.to_string())
        }
        Command::Segments => segments(paths.instance()).map_err(|e| e.to_string()),
        Command::Topic { action } => topic_cli::run(paths.instance(), action),
        Command::Store { action } => match store_cli::run(action) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Writes to stdout; a reader that went away (`grafos status | head`) is
/// not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("grafos: writing to stdout: {e}");
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("grafos: {e}");
    ExitCode::FAILURE
}

fn segments(instance: &str) -> Result<(), FabricError> {
    use std::fmt::Write as _;
    let names = list_segments(instance)?;
    if names.is_empty() {
        emit(&format!(
            "no segments of instance {instance:?} in /dev/shm\n"
        ));
        return Ok(());
    }
    let mut out = format!(
        "{:<32} {:<8} {:>12} {:>5} {:<9} DETAILS\n",
        "OBJECT", "KIND", "BYTES", "GEN", "STATE"
    );
    for object in names {
        let described = SegmentName::new(instance, &object).and_then(|name| describe(&name));
        let _ = match described {
            Ok(row) => writeln!(out, "{object:<32} {row}"),
            Err(e) => writeln!(out, "{object:<32} {e}"),
        };
    }
    emit(&out);
    Ok(())
}

fn describe(name: &SegmentName) -> Result<String, FabricError> {
    let segment = Segment::open(name, &Expect::default())?;
    let fields = segment.fields();
    let fence = segment.header().fence();
    let kind = SegmentKind::from_raw(fields.kind).map_or("?".to_owned(), |k| format!("{k:?}"));
    let details = if fields.kind == SegmentKind::EdgeLog as u32 {
        let p = EdgeLog::from_segment(segment)?.positions();
        format!(
            "tail={} committed={} uncommitted={}B{}",
            p.tail,
            p.committed,
            p.tail.saturating_sub(p.committed),
            if p.sealed { " sealed" } else { "" }
        )
    } else if fields.kind == SegmentKind::Queue as u32 {
        let q = FabricQueue::inspect(segment)?;
        let c = q.counters;
        format!(
            "slots={} stride={}B depth={} participants={} repaired: claims={} reads={}{}",
            q.capacity,
            q.stride,
            q.positions.depth(),
            q.participants,
            c.claims_repaired,
            c.reads_repaired,
            if q.positions.sealed { " sealed" } else { "" }
        )
    } else {
        String::new()
    };
    Ok(format!(
        "{kind:<8} {:>12} {:>5} {:<9} {details}",
        fields.total_size,
        fence.generation,
        format!("{:?}", fence.state)
    ))
}

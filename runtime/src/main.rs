//! `grafos`: the command-line tool of the grafos shared-memory fabric.
//!
//! For now it inspects what lives in `/dev/shm`; the supervisor commands
//! (`up`, `down`, `status`, `run`, leases) build on it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use grafos_worker::FabricError;
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::edge::EdgeLog;
use grafos_worker::layout::header::{Expect, SegmentKind};
use grafos_worker::segment::{Segment, SegmentName, list_segments, validate_instance};

/// grafos: a shared-memory fabric for multi-process pipelines on one host.
///
/// Worker processes exchange records through lock-free logs and queues that
/// live in POSIX shared-memory segments (`/dev/shm/grafos.<instance>.*`).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Instance whose segments to act on.
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
    /// List the instance's segments with their kind, size, fence state and,
    /// for edge logs and queues, positions and repair counts.
    ///
    /// Every header is validated; a segment that fails validation is listed
    /// with the reason instead of its fields.
    Segments,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = validate_instance(&cli.instance) {
        eprintln!("grafos: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Segments => match segments(&cli.instance) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("grafos: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn segments(instance: &str) -> Result<(), FabricError> {
    let names = list_segments(instance)?;
    if names.is_empty() {
        println!("no segments of instance {instance:?} in /dev/shm");
        return Ok(());
    }
    println!(
        "{:<32} {:<8} {:>12} {:>5} {:<9} DETAILS",
        "OBJECT", "KIND", "BYTES", "GEN", "STATE"
    );
    for object in names {
        let name = SegmentName::new(instance, &object)?;
        match describe(&name) {
            Ok(row) => println!("{object:<32} {row}"),
            Err(e) => println!("{object:<32} {e}"),
        }
    }
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

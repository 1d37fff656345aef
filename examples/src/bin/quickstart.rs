//! Two processes exchanging records through an edge log.
//!
//! `quickstart` creates an edge log segment in `/dev/shm`, starts a copy of
//! itself as the consumer, pushes checksummed records, and prints the
//! throughput both sides saw. The consumer verifies every record.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use grafos_worker::edge::{EdgeConfig, EdgeLog};

use grafos_worker::segment::{Segment, SegmentName};

/// Stream records between two processes through a grafos edge log.
///
/// The producer (this process) and a consumer (a child process it starts)
/// share one POSIX shared-memory segment; no socket, no copy beyond the
/// payload. Prints progress every second and the throughput at the end.
#[derive(Parser)]
#[command(about, long_about)]
struct Args {
    /// Records to send.
    #[arg(long, default_value_t = 20_000_000)]
    records: u64,
    /// Bytes per record (at least 16: sequence number and checksum).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=65_536))]
    size: u64,
    /// Ring size in bytes (a power of two).
    #[arg(long, default_value_t = 1 << 20)]
    capacity: u64,
    /// Instance to create the segment in.
    #[arg(long, env = "GRAFOS_INSTANCE", default_value = "default")]
    instance: String,
    /// Run as the consumer of the named segment (used internally).
    #[arg(long, hide = true)]
    consume: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.consume {
        Some(object) => consume(&args, object),
        None => produce(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Writes record `seq` into `buf`: sequence number, filler, checksum.
fn fill(seq: u64, buf: &mut [u8]) {
    let (body, sum) = buf.split_at_mut(buf.len() - 8);
    body[..8].copy_from_slice(&seq.to_le_bytes());
    body[8..].fill(seq as u8);
    sum.copy_from_slice(&u64::from(crc32fast::hash(body)).to_le_bytes());
}

fn produce(args: &Args) -> Result<()> {
    let object = format!("quickstart-{}", std::process::id());
    let name = SegmentName::new(&args.instance, &object)?;
    let log = EdgeLog::create(
        &name,
        &EdgeConfig {
            capacity: args.capacity,
            ..EdgeConfig::default()
        },
    )?;
    // Unlink the segment whatever happens next; mappings stay valid.
    struct Unlink(SegmentName);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = Segment::unlink(&self.0);
        }
    }
    let _unlink = Unlink(name.clone());
    if args.size as usize > log.max_record() {
        return Err(format!(
            "--size {} exceeds the log's maximum record of {} bytes",
            args.size,
            log.max_record()
        )
        .into());
    }
    let mut producer = log.producer()?;
    println!(
        "quickstart: {} records of {} B through /dev/shm/{name} ({} B ring)",
        args.records, args.size, args.capacity
    );
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--consume", &object, "--instance", &args.instance])
        .args([
            "--records",
            &args.records.to_string(),
            "--size",
            &args.size.to_string(),
        ])
        .spawn()?;

    let start = Instant::now();
    let mut next_report = start + Duration::from_secs(1);
    for seq in 0..args.records {
        let mut loan = producer.reserve(args.size as usize, Some(Duration::from_secs(30)))?;
        fill(seq, loan.as_mut_slice());
        loan.commit()?;
        if seq % 65_536 == 0 && Instant::now() >= next_report {
            println!("  producer: {seq} records sent");
            next_report += Duration::from_secs(1);
        }
    }
    let elapsed = start.elapsed();
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("consumer failed: {status}").into());
    }
    report("producer", args, elapsed);
    Ok(())
}

fn consume(args: &Args, object: &str) -> Result<()> {
    let name = SegmentName::new(&args.instance, object)?;
    let log = EdgeLog::open(&name)?;
    let mut consumer = log.consumer()?;
    let mut start = None;
    for seq in 0..args.records {
        let record = consumer.read(Some(Duration::from_secs(30)))?;
        start.get_or_insert_with(Instant::now);
        let bytes = record.bytes();
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if bytes.len() as u64 != args.size
            || u64::from(crc32fast::hash(body)).to_le_bytes() != sum
            || body[..8] != seq.to_le_bytes()
        {
            return Err(format!("record {seq} damaged or out of order").into());
        }
        // Commit in batches, as a consumer that checkpoints would.
        if seq % 256 == 255 {
            consumer.commit_read();
        }
    }
    consumer.commit_read();
    report(
        "consumer",
        args,
        start.map_or(Duration::ZERO, |s| s.elapsed()),
    );
    println!(
        "quickstart: all {} records arrived in order, checksums good",
        args.records
    );
    Ok(())
}

fn report(side: &str, args: &Args, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "  {side}: {} records in {:.2} s = {:.1} M records/s, {:.0} MB/s",
        args.records,
        secs,
        args.records as f64 / secs / 1e6,
        (args.records * args.size) as f64 / secs / 1e6
    );
}

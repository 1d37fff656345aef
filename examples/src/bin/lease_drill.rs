//! A worker that holds a memory lease and keeps it alive, for failover
//! drills: run it, then `grafos lease poison ID` (or `expire`) and watch it
//! notice.
//!
//! It acquires a lease from the instance's supervisor, prints
//! `lease ID acquired`, writes a tick counter into the lease every 100 ms,
//! renews it through a `RenewalManager`, and stops when the lease ends
//! (exit 0, saying how) or after `--for-secs` (releasing it).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use grafos_worker::FabricError;
use grafos_worker::host::unix_time_secs;
use grafos_worker::leasekit::{RenewalManager, RenewalPolicy};
use grafos_worker::mem::MemBuilder;

/// Hold a memory lease until it is expired or poisoned (or time runs out).
#[derive(Parser)]
#[command(about, long_about)]
struct Args {
    /// Instance whose supervisor leases the memory.
    #[arg(long, env = "GRAFOS_INSTANCE", default_value = "default")]
    instance: String,
    /// Bytes to lease.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: u64,
    /// Lease time to live; renewed when a third of it is left.
    #[arg(long, default_value_t = 3)]
    lease_secs: u64,
    /// Give up (and release the lease) after this long.
    #[arg(long, default_value_t = 60)]
    for_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lease_drill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), FabricError> {
    let lease = MemBuilder::new()
        .instance(&args.instance)
        .min_bytes(args.bytes)
        .lease_secs(args.lease_secs)
        .acquire()?;
    let id = lease.lease_id();
    println!(
        "lease {id} acquired ({} bytes, {} s, renewed by a RenewalManager)",
        lease.len(),
        args.lease_secs
    );
    let mut renewals = RenewalManager::for_instance(&args.instance);
    renewals.register(
        id,
        lease.deadline_ms() / 1000,
        RenewalPolicy::new(args.lease_secs),
    );
    let until = Instant::now() + Duration::from_secs(args.for_secs);
    let mut tick = 0u64;
    while Instant::now() < until {
        match lease.write_at(0, &tick.to_le_bytes()) {
            Ok(()) => {}
            Err(e @ (FabricError::LeaseExpired(_) | FabricError::LeasePoisoned(_))) => {
                println!("lease {id} ended after {tick} ticks: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let summary = renewals.tick(unix_time_secs());
        for renewed in summary.renewed {
            println!("lease {renewed} renewed");
        }
        for (failed, e) in summary.failed {
            println!("lease {failed} renewal failed (will retry): {e}");
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    lease.release()?;
    println!("lease {id} released after {tick} ticks");
    Ok(())
}

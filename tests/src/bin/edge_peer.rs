//! A producer or consumer process for the edge log multi-process tests.
//!
//! `edge_peer produce INSTANCE LOG ORACLE` appends checksummed records
//! 0, 1, 2, ... (resuming after the last acknowledged one) until the
//! oracle's limit, recording each acknowledgement after its push returned
//! Ok. `edge_peer consume INSTANCE LOG ORACLE` reads from the committed
//! position, checks order and checksums, marks each record seen, and
//! commits every few records, until every record below the limit was seen.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use grafos_tests::{MAX_RECORDS, Oracle, decode, encode};
use grafos_worker::edge::EdgeLog;
use grafos_worker::segment::SegmentName;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: edge_peer produce|consume INSTANCE LOG ORACLE_FILE");
        return ExitCode::from(2);
    }
    // Die with the harness: a killed test must not leave peers spinning.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("prctl(PR_SET_PDEATHSIG)");
    let name = SegmentName::new(&args[2], &args[3]).expect("valid names");
    let oracle = Oracle::open(Path::new(&args[4])).expect("oracle file");
    let log = EdgeLog::open(&name).expect("edge log exists");
    match args[1].as_str() {
        "produce" => produce(&log, &oracle),
        "consume" => consume(&log, &oracle),
        other => {
            eprintln!("unknown role {other}");
            ExitCode::from(2)
        }
    }
}

fn produce(log: &EdgeLog, oracle: &Oracle) -> ExitCode {
    let counters = oracle.counters();
    counters.producer_starts.fetch_add(1, Ordering::Relaxed);
    let mut producer = log.producer().expect("producer role");
    let mut seq = counters.acked.load(Ordering::Acquire);
    let mut buf = Vec::new();
    loop {
        let limit = counters.limit.load(Ordering::Acquire).min(MAX_RECORDS);
        if seq >= limit {
            return ExitCode::SUCCESS;
        }
        encode(seq, &mut buf);
        producer
            .push(&buf, Some(Duration::from_secs(30)))
            .expect("push");
        // Acknowledged only now, after the push returned Ok.
        seq += 1;
        counters.acked.store(seq, Ordering::Release);
    }
}

fn consume(log: &EdgeLog, oracle: &Oracle) -> ExitCode {
    let counters = oracle.counters();
    counters.consumer_starts.fetch_add(1, Ordering::Relaxed);
    let mut consumer = log.consumer().expect("consumer role");
    let mut previous: Option<u64> = None;
    loop {
        let limit = counters.limit.load(Ordering::Acquire);
        if counters.distinct.load(Ordering::Acquire) >= limit {
            consumer.commit_read();
            return ExitCode::SUCCESS;
        }
        // The producer has sent everything and nothing is left to read:
        // stop, and let the harness count what is missing (a SIGKILL
        // between marking a record seen and counting it leaves `distinct`
        // short, so it alone cannot end the run).
        let producer_done = counters.acked.load(Ordering::Acquire) >= limit;
        if producer_done && !consumer.is_ready() {
            consumer.commit_read();
            return ExitCode::SUCCESS;
        }
        let record = match consumer.read(Some(Duration::from_millis(50))) {
            Ok(record) => record,
            Err(grafos_worker::layout::edge::EdgeError::TimedOut) => {
                // Idle: commit what was read, so a full log cannot wait on
                // a consumer that waits on it.
                consumer.commit_read();
                continue;
            }
            Err(e) => panic!("read failed: {e}"),
        };
        let Some(seq) = decode(record.bytes()) else {
            counters.violations.fetch_add(1, Ordering::Relaxed);
            eprintln!("damaged record at position {}", record.position());
            return ExitCode::from(3);
        };
        // Within one run, records come in order; a producer restarted after
        // publishing but before acknowledging sends one seq twice.
        if let Some(prev) = previous
            && seq != prev
            && seq != prev + 1
        {
            counters.violations.fetch_add(1, Ordering::Relaxed);
            eprintln!("order violation: {seq} after {prev}");
            return ExitCode::from(3);
        }
        let back_to_back = previous == Some(seq);
        previous = Some(seq);
        if oracle.mark_seen(seq) {
            let counter = if back_to_back {
                &counters.producer_duplicates
            } else {
                &counters.redeliveries
            };
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.distinct.fetch_add(1, Ordering::AcqRel);
        }
        // Commit every few records, so a kill leaves some read but
        // uncommitted (they must come again).
        if seq % 16 == 0 {
            consumer.commit_read();
        }
    }
}

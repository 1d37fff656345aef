//! The worker side of the multi-process tests: this test binary, started
//! again with `GRAFOS_TEST_PEER=1`, reads commands from stdin and answers
//! each with one line on stdout (`ok ...` or `err <error>`).
//!
//! Commands: `acquire-mem BYTES SECS [WAIT_MS]`, `acquire-block BLOCKS
//! SECS`, `open-mem ID`, `open-block ID`, `write TEXT`, `read LEN`,
//! `check`, `renew SECS`, `keep-alive SECS FOR_MS`, `release`,
//! `claim QUEUE` (hold an unpublished claim on a queue of the instance),
//! `attach`; and for handoff records `handoff-writer BLOCKS` (a new record
//! on a new block lease), `handoff-publish LEASE OFFSET`, `handoff-open
//! BLOCK_LEASE` (a reader), `handoff-read`, `handoff-gen` (the live
//! generation only), `handoff-wait GENERATION MS`,
//! `handoff-stale-writer LEASE` (a writer that believes generation 0
//! publishes).

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use grafos_worker::block::{BlockBuilder, BlockLease};
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::fence::FenceEpoch;
use grafos_worker::host::unix_time_secs;
use grafos_worker::leasekit::{RenewalManager, RenewalPolicy};
use grafos_worker::locator::QueueLocator;
use grafos_worker::locator::handoff::{HandoffReader, HandoffState, HandoffWriter};
use grafos_worker::mem::{MemBuilder, MemLease};
use grafos_worker::participant::attach;
use grafos_worker::segment::SegmentName;
use grafos_worker::{FabricError, Result};

enum Lease {
    None,
    Mem(MemLease),
    Block(BlockLease),
}

impl Lease {
    fn id(&self) -> Result<u64> {
        match self {
            Lease::None => Err(FabricError::InvalidArgument("no lease held".into())),
            Lease::Mem(l) => Ok(l.lease_id()),
            Lease::Block(l) => Ok(l.lease_id()),
        }
    }
}

pub fn main() {
    let instance = std::env::var("GRAFOS_INSTANCE").expect("GRAFOS_INSTANCE is set");
    let mut lease = Lease::None;
    let mut handoffs = Handoffs::default();
    // Held claims and queues stay alive until the process ends.
    let mut queues: Vec<&'static FabricQueue> = Vec::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin is readable");
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.first().copied() {
            Some(command) if command.starts_with("handoff-") => {
                handoff(&instance, &words, &mut handoffs)
            }
            _ => run(&instance, &words, &mut lease, &mut queues),
        };
        let mut out = std::io::stdout().lock();
        match answer {
            Ok(text) => writeln!(out, "ok {text}"),
            Err(e) => writeln!(out, "err {e}"),
        }
        .and_then(|()| out.flush())
        .expect("stdout is writable");
    }
}

fn num(words: &[&str], i: usize) -> Result<u64> {
    words
        .get(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| FabricError::InvalidArgument(format!("argument {i} of {words:?}")))
}

fn run(
    instance: &str,
    words: &[&str],
    lease: &mut Lease,
    queues: &mut Vec<&'static FabricQueue>,
) -> Result<String> {
    match words.first().copied().unwrap_or("") {
        "attach" => Ok(attach(instance)?.incarnation().to_string()),
        "acquire-mem" => {
            let mut builder = MemBuilder::new()
                .instance(instance)
                .min_bytes(num(words, 1)?)
                .lease_secs(num(words, 2)?);
            if let Ok(wait) = num(words, 3) {
                builder = builder.wait_for_budget(Duration::from_millis(wait));
            }
            let l = builder.acquire()?;
            let text = format!("{} {}", l.lease_id(), l.deadline_ms());
            *lease = Lease::Mem(l);
            Ok(text)
        }
        "acquire-block" => {
            let l = BlockBuilder::new()
                .instance(instance)
                .min_blocks(num(words, 1)?)
                .lease_secs(num(words, 2)?)
                .acquire()?;
            let text = format!("{} {}", l.lease_id(), l.path().display());
            *lease = Lease::Block(l);
            Ok(text)
        }
        "open-mem" => {
            *lease = Lease::Mem(MemLease::open_in(instance, num(words, 1)?)?);
            Ok(String::new())
        }
        "open-block" => {
            *lease = Lease::Block(BlockLease::open_in(instance, num(words, 1)?)?);
            Ok(String::new())
        }
        "write" => {
            let text = words.get(1).unwrap_or(&"").as_bytes();
            match lease {
                Lease::Mem(l) => l.write_at(0, text)?,
                Lease::Block(l) => l.write_at(0, text)?,
                Lease::None => return Err(lease.id().unwrap_err()),
            }
            Ok(String::new())
        }
        "read" => {
            let mut buf = vec![0u8; num(words, 1)? as usize];
            match lease {
                Lease::Mem(l) => l.read_at(0, &mut buf)?,
                Lease::Block(l) => l.read_at(0, &mut buf)?,
                Lease::None => return Err(lease.id().unwrap_err()),
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "check" => match lease {
            Lease::Mem(l) => l.check().map(|()| String::new()),
            Lease::Block(l) => l.check().map(|()| String::new()),
            Lease::None => Err(lease.id().unwrap_err()),
        },
        "renew" => {
            let secs = num(words, 1)?;
            match lease {
                Lease::Mem(l) => l.renew(secs)?,
                Lease::Block(l) => l.renew(secs)?,
                Lease::None => return Err(lease.id().unwrap_err()),
            }
            Ok(String::new())
        }
        "keep-alive" => {
            let (secs, for_ms) = (num(words, 1)?, num(words, 2)?);
            let deadline = match lease {
                Lease::Mem(l) => l.deadline_ms(),
                Lease::Block(l) => l.deadline_ms(),
                Lease::None => return Err(lease.id().unwrap_err()),
            };
            let mut renewals = RenewalManager::for_instance(instance);
            renewals.register(lease.id()?, deadline / 1000, RenewalPolicy::new(secs));
            let until = Instant::now() + Duration::from_millis(for_ms);
            let mut renewed = 0;
            while Instant::now() < until {
                let summary = renewals.tick(unix_time_secs());
                if let Some((_, e)) = summary.lost.into_iter().chain(summary.failed).next() {
                    return Err(e);
                }
                renewed += summary.renewed.len();
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(renewed.to_string())
        }
        "release" => {
            match std::mem::replace(lease, Lease::None) {
                Lease::Mem(l) => l.release()?,
                Lease::Block(l) => l.release()?,
                Lease::None => return Err(lease.id().unwrap_err()),
            }
            Ok(String::new())
        }
        "claim" => {
            attach(instance)?;
            let name = SegmentName::new(instance, words.get(1).unwrap_or(&""))?;
            let queue: &'static FabricQueue = Box::leak(Box::new(FabricQueue::open(&name)?));
            let loan = queue.try_reserve(8)?;
            // Never committed: the claim stays WRITING until we die.
            std::mem::forget(loan);
            queues.push(queue);
            Ok(std::process::id().to_string())
        }
        other => Err(FabricError::InvalidArgument(format!(
            "unknown command {other:?}"
        ))),
    }
}

#[derive(Default)]
struct Handoffs {
    writer: Option<HandoffWriter<QueueLocator>>,
    reader: Option<HandoffReader<QueueLocator>>,
    block: Option<u64>,
}

fn show(state: &HandoffState<QueueLocator>) -> String {
    format!(
        "{} {} {}",
        state.generation.value(),
        state.locator.lease_id,
        state.locator.offset
    )
}

fn handoff(instance: &str, words: &[&str], h: &mut Handoffs) -> Result<String> {
    let missing = || FabricError::InvalidArgument("no handoff record open".into());
    match words[0] {
        "handoff-writer" => {
            let lease = BlockBuilder::new()
                .instance(instance)
                .min_blocks(num(words, 1)?)
                .lease_secs(60)
                .acquire()?;
            let id = lease.lease_id();
            let initial = HandoffState {
                stage_id: 1,
                generation: FenceEpoch::zero(),
                locator: QueueLocator::new(0, 0, 0),
            };
            h.writer = Some(HandoffWriter::new(initial, lease)?);
            h.block = Some(id);
            Ok(id.to_string())
        }
        "handoff-publish" => {
            let writer = h.writer.as_mut().ok_or_else(missing)?;
            let next = writer.state().generation.next().value();
            let locator = QueueLocator::new(num(words, 1)?, num(words, 2)?, next);
            Ok(writer.publish(locator)?.value().to_string())
        }
        "handoff-open" => {
            h.reader = Some(HandoffReader::new(BlockLease::open_in(
                instance,
                num(words, 1)?,
            )?)?);
            Ok(String::new())
        }
        "handoff-read" => Ok(show(&h.reader.as_mut().ok_or_else(missing)?.current()?)),
        "handoff-gen" => Ok(h
            .reader
            .as_ref()
            .ok_or_else(missing)?
            .generation()
            .value()
            .to_string()),
        "handoff-wait" => {
            let reader = h.reader.as_mut().ok_or_else(missing)?;
            let cached = FenceEpoch::from_value(num(words, 1)?);
            let timeout = std::time::Duration::from_millis(num(words, 2)?);
            Ok(show(&reader.wait_newer(cached, Some(timeout))?))
        }
        "handoff-stale-writer" => {
            let lease = BlockLease::open_in(instance, num(words, 1)?)?;
            let initial = HandoffState {
                stage_id: 1,
                generation: FenceEpoch::zero(),
                locator: QueueLocator::new(0, 0, 0),
            };
            let mut writer = HandoffWriter::new(initial, lease)?;
            writer.publish(QueueLocator::new(555, 0, 1))?;
            Ok("published".into())
        }
        other => Err(FabricError::InvalidArgument(format!(
            "unknown command {other:?}"
        ))),
    }
}

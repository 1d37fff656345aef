//! Shared pieces of the multi-process tests: the oracle file that peers
//! and the harness share, and record encoding.
//!
//! The oracle is a plain file mapped by every process of a test. It
//! survives SIGKILL of any of them, so the harness can check afterwards
//! what was acknowledged and what arrived.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use grafos_shm_layout::header::fnv1a;
use memmap2::MmapRaw;

/// Largest number of records a test may send (bitmap size).
pub const MAX_RECORDS: u64 = 1 << 24;

/// Counters shared by the harness, the producer and the consumer.
#[repr(C)]
pub struct OracleCounters {
    /// Records acknowledged by the producer: every seq below it had its
    /// push return Ok.
    pub acked: AtomicU64,
    /// The producer sends seqs below this (u64::MAX: no limit yet).
    pub limit: AtomicU64,
    /// Distinct seqs the consumer has seen.
    pub distinct: AtomicU64,
    /// Records the consumer saw again after a restart from its commit.
    pub redeliveries: AtomicU64,
    /// Records the producer sent twice (restarted after publishing, before
    /// acknowledging), seen back to back.
    pub producer_duplicates: AtomicU64,
    /// Order or checksum violations seen by the consumer.
    pub violations: AtomicU64,
    /// Times a consumer started (first start included).
    pub consumer_starts: AtomicU64,
    /// Times a producer started.
    pub producer_starts: AtomicU64,
    /// Next seq to hand out (queue tests: producers share the seq space).
    pub next_seq: AtomicU64,
    /// Records seen more than once (queue tests: must stay zero).
    pub duplicates: AtomicU64,
    /// Set by the harness once every producer has exited.
    pub producers_done: AtomicU64,
    /// Times a peer reached its armed crash point and killed or stopped
    /// itself there.
    pub crash_hits: AtomicU64,
}

/// The mapped oracle file.
pub struct Oracle {
    map: MmapRaw,
}

const BITMAP_WORDS: usize = (MAX_RECORDS / 64) as usize;
/// Consumer starts whose record in hand the oracle can track.
pub const MAX_CONSUMER_STARTS: u64 = 4096;
/// Counters, the seen bitmap, the acknowledged bitmap, the records in hand.
const ORACLE_LEN: usize =
    size_of::<OracleCounters>() + 2 * BITMAP_WORDS * 8 + MAX_CONSUMER_STARTS as usize * 8;

impl Oracle {
    /// Creates (zeroed) or opens the oracle at `path`.
    pub fn open(path: &Path) -> std::io::Result<Oracle> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(ORACLE_LEN as u64)?;
        Ok(Oracle {
            map: MmapRaw::map_raw(&file)?,
        })
    }

    /// The counters.
    pub fn counters(&self) -> &OracleCounters {
        // SAFETY: the mapping is ORACLE_LEN bytes, page-aligned, and
        // OracleCounters is all atomics (valid for any bytes, zero at first).
        unsafe { &*self.map.as_ptr().cast::<OracleCounters>() }
    }

    fn word(&self, bitmap: usize, seq: u64) -> &AtomicU64 {
        assert!(seq < MAX_RECORDS, "seq {seq} beyond the oracle's bitmap");
        // SAFETY: in bounds (seq checked above, bitmap is 0 or 1), 8-aligned,
        // atomics.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(size_of::<OracleCounters>())
                .cast::<AtomicU64>()
                .add(bitmap * BITMAP_WORDS + (seq / 64) as usize)
        }
    }

    /// Marks `seq` seen; returns whether it was seen before.
    pub fn mark_seen(&self, seq: u64) -> bool {
        let bit = 1 << (seq % 64);
        self.word(0, seq).fetch_or(bit, Ordering::AcqRel) & bit != 0
    }

    /// Whether `seq` was seen.
    pub fn seen(&self, seq: u64) -> bool {
        self.word(0, seq).load(Ordering::Acquire) & (1 << (seq % 64)) != 0
    }

    /// Marks `seq` acknowledged (its push returned Ok).
    pub fn mark_acked(&self, seq: u64) {
        self.word(1, seq)
            .fetch_or(1 << (seq % 64), Ordering::AcqRel);
    }

    fn hand(&self, consumer: u64) -> &AtomicU64 {
        assert!(consumer < MAX_CONSUMER_STARTS, "too many consumer starts");
        // SAFETY: in bounds (checked above), 8-aligned (after the counters
        // and two bitmaps of u64 words), atomics.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(size_of::<OracleCounters>() + 2 * BITMAP_WORDS * 8)
                .cast::<AtomicU64>()
                .add(consumer as usize)
        }
    }

    /// Records that consumer start `consumer` holds record `seq` (taken
    /// from the queue, not yet released), or nothing (`None`).
    pub fn set_in_hand(&self, consumer: u64, seq: Option<u64>) {
        self.hand(consumer)
            .store(seq.map_or(0, |s| s + 1), Ordering::Release);
    }

    /// The record consumer start `consumer` held when it last said so.
    pub fn in_hand(&self, consumer: u64) -> Option<u64> {
        self.hand(consumer).load(Ordering::Acquire).checked_sub(1)
    }

    /// Whether `seq` was acknowledged.
    pub fn acked(&self, seq: u64) -> bool {
        self.word(1, seq).load(Ordering::Acquire) & (1 << (seq % 64)) != 0
    }
}

/// Encodes record `seq`: seq, filler of a seq-dependent length, checksum.
pub fn encode(seq: u64, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    let filler = (seq.wrapping_mul(2_654_435_761) % 240) as usize;
    buf.extend((0..filler).map(|i| (seq as usize + i) as u8));
    let sum = fnv1a(buf);
    buf.extend_from_slice(&sum.to_le_bytes());
}

/// Decodes a record, checking its checksum; `None` if it is damaged.
pub fn decode(record: &[u8]) -> Option<u64> {
    if record.len() < 16 {
        return None;
    }
    let (body, sum) = record.split_at(record.len() - 8);
    if fnv1a(body).to_le_bytes() != sum {
        return None;
    }
    Some(u64::from_le_bytes(body[..8].try_into().ok()?))
}

//! The edge log: one producer, one consumer, records kept until committed.
//!
//! A byte ring of power-of-two capacity holding variable-length records.
//! Positions are absolute `u64` byte offsets that only grow; a record at
//! position `p` lives at ring offset `p & (capacity - 1)`. Like Aeron's
//! subscriber position, the consumer's `committed` position is shared: the
//! producer may overwrite bytes only below it, and a consumer that reopens
//! the log resumes there, so a record read but not committed is read again.
//!
//! Record framing (8-byte aligned): an 8-byte header `len: u32, kind: u32`
//! followed by `len` payload bytes padded to 8. A record never wraps: when it
//! does not fit before the end of the ring, a PAD record fills the rest and
//! the record starts at offset 0. Records are at most `capacity / 2` bytes
//! framed, so an empty ring always has room for one.
//!
//! Publication is a single `compare_exchange` of `tail` (Release), which
//! fails once the CLOSED bit is set by [`Edge::seal`]: after a seal no
//! record can appear, and nothing is ever visible half-written.
//!
//! Everything the consumer reads from the ring (headers, lengths, `tail`)
//! is bounds-checked: a scribbled segment yields [`EdgeError::Corrupt`].

use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use crate::error::LayoutError;
use crate::mutant::{self, Mutant, order};
use crate::sync::{AtomicU64, Ordering};
use crate::wait::{Futex, WaitPoint, Waiter};

/// Bit 63 of `tail`: the log is sealed; publishing fails.
pub const CLOSED: u64 = 1 << 63;
/// Size of a record header.
pub const RECORD_HEADER: u64 = 8;
/// Smallest ring capacity.
pub const MIN_CAPACITY: u64 = 64;
/// Largest ring capacity (1 TiB; framed records stay below `u32::MAX`
/// only up to 8 GiB rings, so payloads are also capped by `u32`).
pub const MAX_CAPACITY: u64 = 1 << 40;
/// Size of [`EdgeControl`] in a segment; the ring follows it.
pub const CONTROL_SIZE: u64 = 768;

const KIND_DATA: u32 = 0x4154_4144; // "DATA"
const KIND_PAD: u32 = 0x2044_4150; // "PAD "

/// The consumer's registration bit on `data_wait`.
pub const CONSUMER_WAITER: Waiter = Waiter::slot(0);
/// The producer's registration bit on `space_wait`.
pub const PRODUCER_WAITER: Waiter = Waiter::slot(1);

/// Immutable parameters, written once by the creator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct EdgeParams {
    /// Ring size in bytes: a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
    pub capacity: u64,
    /// Largest payload: `min(capacity / 2 - RECORD_HEADER, u32::MAX & !7)`.
    pub max_payload: u64,
    /// Reserved, zero.
    pub reserved: [u64; 14],
}

impl EdgeParams {
    /// Parameters for a ring of `capacity` bytes.
    ///
    /// # Errors
    /// `capacity` is not a power of two within bounds.
    pub fn new(capacity: u64) -> Result<EdgeParams, LayoutError> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(LayoutError::Corrupt(
                "edge capacity must be a power of two from 64 B to 1 TiB",
            ));
        }
        let max_payload = (capacity / 2 - RECORD_HEADER).min(u64::from(!7u32));
        Ok(EdgeParams {
            capacity,
            max_payload,
            reserved: [0; 14],
        })
    }
}

/// The validated shape of a ring, cached by handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Ring size in bytes.
    pub capacity: u64,
    /// Largest payload in bytes.
    pub max_payload: u64,
}

impl Geometry {
    /// Validates parameters read from a segment whose ring has `ring_len`
    /// bytes available.
    ///
    /// # Errors
    /// [`LayoutError::Corrupt`] or [`LayoutError::TooSmall`].
    pub fn validate(params: &EdgeParams, ring_len: u64) -> Result<Geometry, LayoutError> {
        let expected = EdgeParams::new(params.capacity)?;
        if params.max_payload != expected.max_payload {
            return Err(LayoutError::Corrupt(
                "edge max payload inconsistent with capacity",
            ));
        }
        if ring_len < params.capacity {
            return Err(LayoutError::TooSmall {
                size: ring_len,
                needed: params.capacity,
            });
        }
        Ok(Geometry {
            capacity: params.capacity,
            max_payload: params.max_payload,
        })
    }

    fn mask(&self) -> u64 {
        self.capacity - 1
    }

    /// Framed size of a record with `len` payload bytes.
    pub fn framed(len: u64) -> u64 {
        RECORD_HEADER + len.next_multiple_of(8)
    }
}

/// Keeps a value on its own 128-byte line (two x86-64 cache lines, as
/// crossbeam's `CachePadded` explains: the adjacent-line prefetcher pairs
/// them).
#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

/// The role owners: a non-zero identity of the process holding each role.
#[repr(C)]
#[derive(Debug)]
struct Owners {
    producer: AtomicU64,
    consumer: AtomicU64,
}

/// The control block at the start of an edge log's body (768 bytes; see
/// docs/LAYOUT.md). The ring's bytes follow it.
#[repr(C)]
#[derive(Debug)]
pub struct EdgeControl {
    /// Immutable parameters.
    params: EdgeParams,
    /// Producer position (bits 0..63) | CLOSED (bit 63). Written only by the
    /// producer (publish CAS) and the sealer (`fetch_or(CLOSED)`).
    tail: Line<AtomicU64>,
    /// Consumer's committed position. Written only by the consumer.
    committed: Line<AtomicU64>,
    /// The consumer sleeps here waiting for data.
    data_wait: Line<WaitPoint>,
    /// The producer sleeps here waiting for space.
    space_wait: Line<WaitPoint>,
    /// Who holds each role.
    owners: Line<Owners>,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<EdgeParams>() == 128);
    assert!(size_of::<EdgeControl>() == CONTROL_SIZE as usize);
    assert!(offset_of!(EdgeControl, tail) == 128);
    assert!(offset_of!(EdgeControl, committed) == 256);
    assert!(offset_of!(EdgeControl, data_wait) == 384);
    assert!(offset_of!(EdgeControl, space_wait) == 512);
    assert!(offset_of!(EdgeControl, owners) == 640);
};

impl EdgeControl {
    /// A control block on the heap with both positions at `start` (for
    /// models and tests; segments are initialised with `init_in_place`).
    ///
    /// # Panics
    /// If `start` is not 8-aligned.
    pub fn new(params: EdgeParams, start: u64) -> EdgeControl {
        assert!(
            start.is_multiple_of(8) && start & CLOSED == 0,
            "start must be 8-aligned"
        );
        EdgeControl {
            params,
            tail: Line(AtomicU64::new(start)),
            committed: Line(AtomicU64::new(start)),
            data_wait: Line(WaitPoint::new()),
            space_wait: Line(WaitPoint::new()),
            owners: Line(Owners {
                producer: AtomicU64::new(0),
                consumer: AtomicU64::new(0),
            }),
        }
    }

    /// Initialises a control block in zeroed memory that no other process
    /// uses yet.
    ///
    /// # Safety
    /// `ptr` is valid for writes of `CONTROL_SIZE` bytes, 128-aligned, zeroed,
    /// and not accessed by anyone else until this returns.
    #[cfg(not(loom))]
    pub unsafe fn init_in_place(ptr: *mut EdgeControl, params: EdgeParams, start: u64) {
        assert!(
            start.is_multiple_of(8) && start & CLOSED == 0,
            "start must be 8-aligned"
        );
        // SAFETY: the caller guarantees exclusive, valid, aligned memory;
        // zero bytes are valid atomics, so only these fields need writing.
        unsafe {
            std::ptr::addr_of_mut!((*ptr).params).write(params);
            (*ptr).tail.0.store(start, Ordering::Relaxed);
            (*ptr).committed.0.store(start, Ordering::Relaxed);
        }
    }

    /// Copies the parameters out (another process may scribble on them, so
    /// the copy is what gets validated and used).
    pub fn params(&self) -> EdgeParams {
        // SAFETY: `params` is a valid, aligned field of `self`; a volatile
        // read copies whatever bytes are there, and every bit pattern is a
        // valid `EdgeParams` (it is `Pod`).
        unsafe { std::ptr::read_volatile(&self.params) }
    }
}

/// The bytes of a ring, however they are stored: a mapped segment in
/// production, a heap model under loom.
///
/// # Safety
/// `read` and `write` must copy exactly the bytes at `off..off + buf.len()`
/// of a region of `len()` bytes that stays valid while `self` lives.
pub unsafe trait RingBytes {
    /// Size of the region in bytes.
    fn len(&self) -> u64;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `src` into the region at `off`.
    ///
    /// # Safety
    /// `off + src.len() <= self.len()`, and no other thread or process
    /// accesses those bytes concurrently.
    unsafe fn write(&self, off: u64, src: &[u8]);

    /// Copies the region's bytes at `off` into `dst`.
    ///
    /// # Safety
    /// `off + dst.len() <= self.len()`, and nobody writes those bytes
    /// concurrently.
    unsafe fn read(&self, off: u64, dst: &mut [u8]);
}

/// Why an edge log operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EdgeError {
    /// The record is larger than the log's largest payload.
    TooLarge {
        /// Payload length asked for.
        len: u64,
        /// Largest payload the log takes.
        max: u64,
    },
    /// No room until the consumer commits.
    Full,
    /// The log is sealed: no more publishing; a consumer has read everything.
    Sealed,
    /// A commit position that is not a record boundary between the
    /// committed and the read position.
    BadPosition(u64),
    /// A blocking operation reached its deadline.
    TimedOut,
    /// A value read from shared memory is inconsistent.
    Corrupt(&'static str),
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeError::TooLarge { len, max } => {
                write!(
                    f,
                    "record of {len} bytes exceeds the log's maximum of {max}"
                )
            }
            EdgeError::Full => f.write_str("edge log full"),
            EdgeError::Sealed => f.write_str("edge log sealed"),
            EdgeError::BadPosition(pos) => {
                write!(f, "position {pos} is not a readable record boundary")
            }
            EdgeError::TimedOut => f.write_str("timed out"),
            EdgeError::Corrupt(what) => write!(f, "corrupt edge log: {what}"),
        }
    }
}

impl std::error::Error for EdgeError {}

/// The producer's private state: its tail and a cached committed position.
#[derive(Clone, Copy, Debug)]
pub struct ProducerCursor {
    tail: u64,
    committed: u64,
}

impl ProducerCursor {
    /// Position the next record will get.
    pub fn position(&self) -> u64 {
        self.tail
    }
}

/// Space reserved for one record, not yet visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a reservation is invisible until published"]
pub struct Reservation {
    /// Position of the record.
    pub position: u64,
    /// Ring offset of the payload.
    pub payload_offset: u64,
    /// Payload length.
    pub len: u64,
    next: u64,
}

/// The consumer's private state: read and committed positions and a cached
/// tail.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerCursor {
    read: u64,
    committed: u64,
    tail: u64,
}

impl ConsumerCursor {
    /// Position after the last record read.
    pub fn read_position(&self) -> u64 {
        self.read
    }

    /// The consumer's committed position.
    pub fn committed_position(&self) -> u64 {
        self.committed
    }
}

/// A record found by the consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAt {
    /// Position of the record.
    pub position: u64,
    /// Ring offset of the payload.
    pub payload_offset: u64,
    /// Payload length.
    pub len: u64,
    /// Position after the record: what to commit once it is handled.
    pub next: u64,
}

/// An edge log: its control block, its ring bytes and its validated shape.
/// Cheap to build; the handles in `grafos-worker` build one per call.
pub struct Edge<'a, M: RingBytes> {
    ctrl: &'a EdgeControl,
    ring: &'a M,
    geo: Geometry,
}

impl<'a, M: RingBytes> Edge<'a, M> {
    /// Validates the control block against the ring and binds them.
    ///
    /// # Errors
    /// The parameters are inconsistent or the ring is too small.
    pub fn new(ctrl: &'a EdgeControl, ring: &'a M) -> Result<Edge<'a, M>, LayoutError> {
        let geo = Geometry::validate(&ctrl.params(), ring.len())?;
        Ok(Edge { ctrl, ring, geo })
    }

    /// Binds parts whose geometry was validated before (hot path).
    ///
    /// # Panics
    /// In debug builds, if `geo` does not fit `ring`.
    pub fn with_geometry(ctrl: &'a EdgeControl, ring: &'a M, geo: Geometry) -> Edge<'a, M> {
        debug_assert!(geo.capacity <= ring.len());
        Edge { ctrl, ring, geo }
    }

    /// The ring's shape.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// `(tail, committed, sealed)` as currently stored (diagnostics).
    pub fn positions(&self) -> (u64, u64, bool) {
        let tail = self.ctrl.tail.0.load(Ordering::Acquire);
        let committed = self.ctrl.committed.0.load(Ordering::Acquire);
        (tail & !CLOSED, committed, tail & CLOSED != 0)
    }

    /// Whether the log is sealed.
    pub fn is_sealed(&self) -> bool {
        self.ctrl.tail.0.load(Ordering::Acquire) & CLOSED != 0
    }

    // ----- roles -----

    /// Takes the producer role for `me` (non-zero), taking it over from a
    /// holder that `is_dead` says is gone. Acquire on success pairs with
    /// the AcqRel release of the previous holder.
    ///
    /// # Errors
    /// The identity of the live holder.
    pub fn claim_producer(&self, me: u64, is_dead: impl Fn(u64) -> bool) -> Result<(), u64> {
        claim(&self.ctrl.owners.0.producer, me, is_dead)?;
        // A dead predecessor may have been registered as a sleeper.
        self.ctrl.space_wait.0.clear(PRODUCER_WAITER);
        Ok(())
    }

    /// Takes the consumer role; see [`Edge::claim_producer`].
    ///
    /// # Errors
    /// The identity of the live holder.
    pub fn claim_consumer(&self, me: u64, is_dead: impl Fn(u64) -> bool) -> Result<(), u64> {
        claim(&self.ctrl.owners.0.consumer, me, is_dead)?;
        self.ctrl.data_wait.0.clear(CONSUMER_WAITER);
        Ok(())
    }

    /// Gives the producer role back (no-op unless `me` holds it).
    pub fn release_producer(&self, me: u64) {
        let _ = self.ctrl.owners.0.producer.compare_exchange(
            me,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Gives the consumer role back (no-op unless `me` holds it).
    pub fn release_consumer(&self, me: u64) {
        let _ = self.ctrl.owners.0.consumer.compare_exchange(
            me,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Current `(producer, consumer)` role holders (0 = none).
    pub fn owners(&self) -> (u64, u64) {
        (
            self.ctrl.owners.0.producer.load(Ordering::Acquire),
            self.ctrl.owners.0.consumer.load(Ordering::Acquire),
        )
    }

    // ----- producer -----

    /// The producer's starting state: the stored tail.
    ///
    /// # Errors
    /// `Sealed`, or `Corrupt` if the stored positions are inconsistent.
    pub fn producer_cursor(&self) -> Result<ProducerCursor, EdgeError> {
        // Acquire pairs with the previous producer's publish CAS (a producer
        // taking over from a dead one continues after its last record).
        let raw = self.ctrl.tail.0.load(Ordering::Acquire);
        if raw & CLOSED != 0 {
            return Err(EdgeError::Sealed);
        }
        let committed = self.ctrl.committed.0.load(Ordering::Acquire);
        self.check_span(raw, committed)?;
        Ok(ProducerCursor {
            tail: raw,
            committed,
        })
    }

    fn check_span(&self, tail: u64, committed: u64) -> Result<(), EdgeError> {
        if !tail.is_multiple_of(8) || !committed.is_multiple_of(8) {
            return Err(EdgeError::Corrupt("unaligned position"));
        }
        match tail.checked_sub(committed) {
            Some(used) if used <= self.geo.capacity => Ok(()),
            _ => Err(EdgeError::Corrupt("committed position outside the ring")),
        }
    }

    /// Bytes a record of `len` needs at `tail`, padding included.
    fn needed(&self, tail: u64, len: u64) -> u64 {
        let framed = Geometry::framed(len);
        let to_end = self.geo.capacity - (tail & self.geo.mask());
        if framed <= to_end {
            framed
        } else {
            to_end + framed
        }
    }

    /// Reserves room for a record of `len` bytes and writes its framing.
    /// Nothing is visible until [`Edge::publish`].
    ///
    /// # Errors
    /// `TooLarge`, `Full`, or `Corrupt` if the committed position read from
    /// the segment is inconsistent.
    pub fn try_reserve(
        &self,
        cur: &mut ProducerCursor,
        len: u64,
    ) -> Result<Reservation, EdgeError> {
        if len > self.geo.max_payload {
            return Err(EdgeError::TooLarge {
                len,
                max: self.geo.max_payload,
            });
        }
        let need = self.needed(cur.tail, len);
        if cur.tail - cur.committed + need > self.geo.capacity {
            // Acquire pairs with the consumer's Release store in `commit`:
            // its reads of the bytes we are about to overwrite are done.
            let committed = self.ctrl.committed.0.load(Ordering::Acquire);
            self.check_span(cur.tail, committed)?;
            if committed < cur.committed {
                return Err(EdgeError::Corrupt("committed position moved backwards"));
            }
            cur.committed = committed;
            if cur.tail - committed + need > self.geo.capacity {
                // A sealed log never drains for the producer: say so, or a
                // blocking push would wait for space forever.
                return Err(if self.is_sealed() {
                    EdgeError::Sealed
                } else {
                    EdgeError::Full
                });
            }
        }
        let mut start = cur.tail;
        let off = start & self.geo.mask();
        let to_end = self.geo.capacity - off;
        let framed = Geometry::framed(len);
        if framed > to_end {
            // SAFETY: off + 8 <= capacity (both 8-aligned, off < capacity);
            // the bytes are free (below committed + capacity) and only the
            // producer writes free bytes.
            unsafe { self.write_header(off, (to_end - RECORD_HEADER) as u32, KIND_PAD) };
            start += to_end;
        }
        let off = start & self.geo.mask();
        // SAFETY: as above; the record fits before the end of the ring.
        unsafe { self.write_header(off, len as u32, KIND_DATA) };
        Ok(Reservation {
            position: start,
            payload_offset: off + RECORD_HEADER,
            len,
            next: start + framed,
        })
    }

    /// # Safety
    /// `off + 8 <= capacity` and the bytes are the producer's to write.
    unsafe fn write_header(&self, off: u64, len: u32, kind: u32) {
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&kind.to_le_bytes());
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.write(off, &header) };
    }

    /// Copies `payload` into a reservation.
    ///
    /// # Panics
    /// If `payload.len()` differs from the reserved length.
    pub fn fill(&self, res: &Reservation, payload: &[u8]) {
        assert_eq!(
            payload.len() as u64,
            res.len,
            "payload length differs from the reservation"
        );
        // SAFETY: the reservation lies inside the ring and belongs to the
        // producer until published.
        unsafe { self.ring.write(res.payload_offset, payload) };
    }

    /// Makes a reserved record visible and returns its position. Does not
    /// wake the consumer: call [`Edge::wake_consumer`] (once per batch).
    ///
    /// # Errors
    /// `Sealed` if the log was sealed since the reservation (the record is
    /// dropped), `Corrupt` if someone else moved `tail`.
    pub fn publish(&self, cur: &mut ProducerCursor, res: Reservation) -> Result<u64, EdgeError> {
        debug_assert!(res.next > cur.tail);
        if mutant::active(Mutant::EdgePublishPlainStore) {
            self.ctrl.tail.0.store(res.next, Ordering::Release);
            cur.tail = res.next;
            return Ok(res.position);
        }
        // Release pairs with the consumer's Acquire load of `tail` in
        // `try_next`: the framing and payload written before are visible to
        // it. The CAS (not a store) fails if a sealer set CLOSED.
        let publish = order(
            Ordering::Release,
            Mutant::EdgePublishRelaxed,
            Ordering::Relaxed,
        );
        match self
            .ctrl
            .tail
            .0
            .compare_exchange(cur.tail, res.next, publish, Ordering::Relaxed)
        {
            Ok(_) => {
                cur.tail = res.next;
                Ok(res.position)
            }
            Err(actual) if actual & CLOSED != 0 => Err(EdgeError::Sealed),
            Err(_) => Err(EdgeError::Corrupt("tail moved under the producer")),
        }
    }

    /// Wakes the consumer if it sleeps.
    #[inline]
    pub fn wake_consumer<F: Futex + ?Sized>(&self, futex: &F) {
        self.ctrl.data_wait.0.wake(futex);
    }

    /// Sleeps until a record of `len` bytes fits, the log is sealed, or
    /// `deadline` passes. Returns false on timeout.
    pub fn wait_for_space<F: Futex + ?Sized>(
        &self,
        cur: &ProducerCursor,
        len: u64,
        futex: &F,
        spins: u32,
        deadline: Option<Instant>,
    ) -> bool {
        let need = self.needed(cur.tail, len.min(self.geo.max_payload));
        self.ctrl
            .space_wait
            .0
            .wait_until(futex, PRODUCER_WAITER, spins, deadline, || {
                let committed = self.ctrl.committed.0.load(Ordering::Relaxed);
                // A corrupt value ends the wait; try_reserve reports it.
                cur.tail.wrapping_sub(committed).saturating_add(need) <= self.geo.capacity
                    || self.is_sealed()
            })
    }

    // ----- consumer -----

    /// The consumer's starting state: reading resumes at the committed
    /// position.
    ///
    /// # Errors
    /// `Corrupt` if the stored positions are inconsistent.
    pub fn consumer_cursor(&self) -> Result<ConsumerCursor, EdgeError> {
        let committed = self.ctrl.committed.0.load(Ordering::Acquire);
        let tail = self.ctrl.tail.0.load(Ordering::Acquire) & !CLOSED;
        self.check_span(tail, committed)?;
        Ok(ConsumerCursor {
            read: committed,
            committed,
            tail: committed,
        })
    }

    /// Finds the next record, if one is published.
    ///
    /// # Errors
    /// `Sealed` once the log is sealed and everything was read; `Corrupt`
    /// when a value read from the segment is out of range.
    pub fn try_next(&self, cur: &mut ConsumerCursor) -> Result<Option<RecordAt>, EdgeError> {
        loop {
            if cur.read == cur.tail {
                // Acquire pairs with the Release publish CAS in `publish`:
                // records below the loaded tail are fully written.
                let load = order(
                    Ordering::Acquire,
                    Mutant::EdgeTailLoadRelaxed,
                    Ordering::Relaxed,
                );
                let raw = self.ctrl.tail.0.load(load);
                let tail = raw & !CLOSED;
                if tail < cur.read {
                    return Err(EdgeError::Corrupt("tail behind the read position"));
                }
                self.check_span(tail, cur.committed)?;
                cur.tail = tail;
                if tail == cur.read {
                    return if raw & CLOSED != 0 {
                        Err(EdgeError::Sealed)
                    } else {
                        Ok(None)
                    };
                }
            }
            let off = cur.read & self.geo.mask();
            let mut header = [0u8; 8];
            // SAFETY: off is 8-aligned and below capacity, so off + 8 fits;
            // the bytes are published and the producer leaves them alone
            // until we commit past them.
            unsafe { self.ring.read(off, &mut header) };
            let len = u64::from(u32::from_le_bytes(header[..4].try_into().unwrap()));
            let kind = u32::from_le_bytes(header[4..].try_into().unwrap());
            let avail = cur.tail - cur.read;
            match kind {
                KIND_PAD => {
                    let to_end = self.geo.capacity - off;
                    if len + RECORD_HEADER != to_end || to_end > avail {
                        return Err(EdgeError::Corrupt("bad padding record"));
                    }
                    cur.read += to_end;
                }
                KIND_DATA => {
                    let framed = Geometry::framed(len);
                    if len > self.geo.max_payload
                        || off + framed > self.geo.capacity
                        || framed > avail
                    {
                        return Err(EdgeError::Corrupt("record length out of range"));
                    }
                    let record = RecordAt {
                        position: cur.read,
                        payload_offset: off + RECORD_HEADER,
                        len,
                        next: cur.read + framed,
                    };
                    cur.read = record.next;
                    return Ok(Some(record));
                }
                _ => return Err(EdgeError::Corrupt("unknown record kind")),
            }
        }
    }

    /// Copies a record's payload into `dst`.
    ///
    /// # Panics
    /// If `dst.len()` differs from the record's length.
    pub fn copy_out(&self, record: &RecordAt, dst: &mut [u8]) {
        assert_eq!(
            dst.len() as u64,
            record.len,
            "buffer length differs from the record"
        );
        // SAFETY: try_next checked the record lies inside the ring; it is
        // not overwritten before the consumer commits past it.
        unsafe { self.ring.read(record.payload_offset, dst) };
    }

    /// Commits `pos`: every record before it is done with and its bytes may
    /// be reused; a consumer reopening the log resumes there.
    ///
    /// # Errors
    /// `BadPosition` unless `pos` is a record boundary between the committed
    /// and the read position.
    pub fn commit<F: Futex + ?Sized>(
        &self,
        cur: &mut ConsumerCursor,
        pos: u64,
        futex: &F,
    ) -> Result<(), EdgeError> {
        if pos == cur.committed {
            return Ok(());
        }
        if pos < cur.committed || pos > cur.read {
            return Err(EdgeError::BadPosition(pos));
        }
        if pos != cur.read && !self.is_boundary(cur.committed, pos) {
            return Err(EdgeError::BadPosition(pos));
        }
        // Release pairs with the producer's Acquire load of `committed` in
        // `try_reserve`: our reads of the freed bytes happen before it
        // overwrites them.
        let commit = order(
            Ordering::Release,
            Mutant::EdgeCommitRelaxed,
            Ordering::Relaxed,
        );
        self.ctrl.committed.0.store(pos, commit);
        cur.committed = pos;
        self.ctrl.space_wait.0.wake(futex);
        Ok(())
    }

    /// Whether walking records from `from` reaches `pos` exactly.
    fn is_boundary(&self, from: u64, pos: u64) -> bool {
        let mut at = from;
        while at < pos {
            let off = at & self.geo.mask();
            let mut header = [0u8; 8];
            // SAFETY: off + 8 <= capacity; the bytes between committed and
            // the read position were validated by try_next and are ours.
            unsafe { self.ring.read(off, &mut header) };
            let len = u64::from(u32::from_le_bytes(header[..4].try_into().unwrap()));
            let kind = u32::from_le_bytes(header[4..].try_into().unwrap());
            at += if kind == KIND_PAD {
                self.geo.capacity - off
            } else {
                Geometry::framed(len)
            };
        }
        at == pos
    }

    /// Sleeps until a record is published after `cur`'s read position, the
    /// log is sealed, or `deadline` passes. Returns false on timeout.
    pub fn wait_for_data<F: Futex + ?Sized>(
        &self,
        cur: &ConsumerCursor,
        futex: &F,
        spins: u32,
        deadline: Option<Instant>,
    ) -> bool {
        self.ctrl
            .data_wait
            .0
            .wait_until(futex, CONSUMER_WAITER, spins, deadline, || {
                self.ctrl.tail.0.load(Ordering::Relaxed) != cur.read
            })
    }

    /// The wait point a consumer sleeps on, for waiting on it together
    /// with others ([`crate::wait::wait_any`]).
    pub fn data_wait_point(&self) -> &'a WaitPoint {
        &self.ctrl.data_wait.0
    }

    // ----- sealing -----

    /// Seals the log: every later publish fails with `Sealed`; a consumer
    /// reads what was published, then gets `Sealed`. Wakes both sides.
    pub fn seal<F: Futex + ?Sized>(&self, futex: &F) {
        // AcqRel: ordered after whatever the sealer did before, and a
        // publish that wins its CAS first is seen by the sealer's copy.
        self.ctrl.tail.0.fetch_or(CLOSED, Ordering::AcqRel);
        self.ctrl.data_wait.0.notify(futex);
        self.ctrl.space_wait.0.notify(futex);
    }
}

fn claim(word: &AtomicU64, me: u64, is_dead: impl Fn(u64) -> bool) -> Result<(), u64> {
    assert_ne!(me, 0, "role owner identities are non-zero");
    let mut current = word.load(Ordering::Acquire);
    loop {
        // A role held by this very identity is taken too: two handles of
        // one process must not share a single-holder role.
        if current != 0 && (current == me || !is_dead(current)) {
            return Err(current);
        }
        match word.compare_exchange(current, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(actual) => current = actual,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::HeapEdge;
    use proptest::prelude::*;

    /// A futex that never sleeps: the unit tests below never block.
    struct NoFutex;
    impl Futex for NoFutex {
        fn wait(&self, _: &crate::sync::AtomicU32, _: u32, _: Option<Instant>) {}
        fn wait_any(&self, _: &[(&crate::sync::AtomicU32, u32)], _: Option<Instant>) {}
        fn wake_all(&self, _: &crate::sync::AtomicU32) {}
    }

    fn push(
        edge: &Edge<'_, crate::heap::HeapRing>,
        cur: &mut ProducerCursor,
        data: &[u8],
    ) -> Result<u64, EdgeError> {
        let res = edge.try_reserve(cur, data.len() as u64)?;
        edge.fill(&res, data);
        edge.publish(cur, res)
    }

    fn pop(
        edge: &Edge<'_, crate::heap::HeapRing>,
        cur: &mut ConsumerCursor,
    ) -> Result<Option<(Vec<u8>, u64)>, EdgeError> {
        Ok(edge.try_next(cur)?.map(|r| {
            let mut buf = vec![0; r.len as usize];
            edge.copy_out(&r, &mut buf);
            (buf, r.next)
        }))
    }

    #[test]
    fn records_round_trip_with_wrap_and_padding() {
        let heap = HeapEdge::new(128, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        let mut c = edge.consumer_cursor().unwrap();
        for round in 0..100u8 {
            let data = vec![round; (round as usize * 7) % 57];
            push(&edge, &mut p, &data).unwrap();
            let (got, next) = pop(&edge, &mut c).unwrap().unwrap();
            assert_eq!(got, data);
            edge.commit(&mut c, next, &NoFutex).unwrap();
        }
        assert_eq!(pop(&edge, &mut c).unwrap(), None);
    }

    #[test]
    fn full_until_commit_and_reopen_resumes_at_commit() {
        let heap = HeapEdge::new(64, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        push(&edge, &mut p, &[1; 8]).unwrap();
        push(&edge, &mut p, &[2; 8]).unwrap();
        push(&edge, &mut p, &[3; 8]).unwrap();
        push(&edge, &mut p, &[4; 8]).unwrap();
        assert_eq!(push(&edge, &mut p, &[5; 8]), Err(EdgeError::Full));
        let mut c = edge.consumer_cursor().unwrap();
        let (_, first) = pop(&edge, &mut c).unwrap().unwrap();
        let (_, second) = pop(&edge, &mut c).unwrap().unwrap();
        edge.commit(&mut c, first, &NoFutex).unwrap();
        // A second consumer (the first one "died") resumes after `first`.
        let mut again = edge.consumer_cursor().unwrap();
        assert_eq!(
            pop(&edge, &mut again).unwrap().unwrap(),
            (vec![2; 8], second)
        );
        push(&edge, &mut p, &[5; 8]).unwrap();
        assert_eq!(push(&edge, &mut p, &[6; 8]), Err(EdgeError::Full));
    }

    #[test]
    fn commit_rejects_positions_that_are_not_boundaries() {
        let heap = HeapEdge::new(256, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        push(&edge, &mut p, &[1; 20]).unwrap();
        push(&edge, &mut p, &[2; 20]).unwrap();
        let mut c = edge.consumer_cursor().unwrap();
        let (_, a) = pop(&edge, &mut c).unwrap().unwrap();
        let (_, b) = pop(&edge, &mut c).unwrap().unwrap();
        assert_eq!(
            edge.commit(&mut c, 8, &NoFutex),
            Err(EdgeError::BadPosition(8))
        );
        assert_eq!(
            edge.commit(&mut c, b + 8, &NoFutex),
            Err(EdgeError::BadPosition(b + 8))
        );
        edge.commit(&mut c, a, &NoFutex).unwrap();
        assert_eq!(
            edge.commit(&mut c, 0, &NoFutex),
            Err(EdgeError::BadPosition(0))
        );
        edge.commit(&mut c, b, &NoFutex).unwrap();
    }

    #[test]
    fn oversized_records_are_refused_with_the_limit() {
        let heap = HeapEdge::new(256, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        assert_eq!(
            edge.try_reserve(&mut p, 121),
            Err(EdgeError::TooLarge { len: 121, max: 120 })
        );
        push(&edge, &mut p, &[7; 120]).unwrap();
    }

    #[test]
    fn seal_fails_late_publish_and_ends_the_stream() {
        let heap = HeapEdge::new(128, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        push(&edge, &mut p, b"kept").unwrap();
        let res = edge.try_reserve(&mut p, 4).unwrap();
        edge.fill(&res, b"lost");
        edge.seal(&NoFutex);
        assert_eq!(edge.publish(&mut p, res), Err(EdgeError::Sealed));
        assert_eq!(edge.producer_cursor().unwrap_err(), EdgeError::Sealed);
        let mut c = edge.consumer_cursor().unwrap();
        assert_eq!(pop(&edge, &mut c).unwrap().unwrap().0, b"kept");
        assert_eq!(pop(&edge, &mut c), Err(EdgeError::Sealed));
    }

    #[test]
    fn positions_start_where_asked() {
        let heap = HeapEdge::new(64, 1 << 40);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        assert_eq!(push(&edge, &mut p, &[1; 3]).unwrap(), 1 << 40);
        let mut c = edge.consumer_cursor().unwrap();
        assert_eq!(pop(&edge, &mut c).unwrap().unwrap().1, (1 << 40) + 16);
    }

    #[test]
    fn roles_are_exclusive_until_the_holder_is_dead() {
        let heap = HeapEdge::new(64, 0);
        let edge = heap.edge();
        edge.claim_producer(7, |_| false).unwrap();
        assert_eq!(edge.claim_producer(8, |_| false), Err(7));
        assert_eq!(
            edge.claim_producer(7, |_| true),
            Err(7),
            "a holder cannot claim twice"
        );
        edge.claim_producer(8, |owner| owner == 7).unwrap();
        edge.release_producer(7);
        assert_eq!(edge.owners().0, 8);
        edge.release_producer(8);
        edge.claim_consumer(9, |_| false).unwrap();
        assert_eq!(edge.owners(), (0, 9));
    }

    proptest! {
        /// Any interleaving of pushes, reads and commits delivers every
        /// published record once, in order, intact.
        #[test]
        fn interleavings_deliver_in_order(ops in proptest::collection::vec((0u8..3, 0usize..60), 1..300)) {
            let heap = HeapEdge::new(256, 0);
            let edge = heap.edge();
            let mut p = edge.producer_cursor().unwrap();
            let mut c = edge.consumer_cursor().unwrap();
            let (mut sent, mut got, mut next_val) = (Vec::new(), Vec::new(), 0u8);
            for (op, len) in ops {
                match op {
                    0 => {
                        let data = vec![next_val; len];
                        match push(&edge, &mut p, &data) {
                            Ok(_) => { sent.push(data); next_val = next_val.wrapping_add(1); }
                            Err(EdgeError::Full) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    1 => if let Some((data, _)) = pop(&edge, &mut c).unwrap() { got.push(data) },
                    _ => { let pos = c.read_position(); edge.commit(&mut c, pos, &NoFutex).unwrap(); }
                }
            }
            while let Some((data, _)) = pop(&edge, &mut c).unwrap() { got.push(data); }
            prop_assert_eq!(sent, got);
        }

        /// Random bytes over the control block's positions and the ring give
        /// records or errors, never a panic or an out-of-bounds access.
        #[test]
        fn scribbled_rings_give_errors_not_panics(
            ring in proptest::collection::vec(any::<u8>(), 256),
            tail in any::<u64>(),
            committed in any::<u64>(),
        ) {
            let heap = HeapEdge::new(256, 0);
            // SAFETY: nothing else touches the heap ring in this test.
            unsafe { heap.ring.write(0, &ring) };
            heap.ctrl.tail.0.store(tail, Ordering::Relaxed);
            heap.ctrl.committed.0.store(committed, Ordering::Relaxed);
            let edge = heap.edge();
            if let Ok(mut c) = edge.consumer_cursor() {
                for _ in 0..64 {
                    match edge.try_next(&mut c) {
                        Ok(Some(r)) => {
                            prop_assert!(r.payload_offset + r.len <= 256);
                            let mut buf = vec![0; r.len as usize];
                            edge.copy_out(&r, &mut buf);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            if let Ok(mut p) = edge.producer_cursor() {
                let _ = edge.try_reserve(&mut p, 16);
            }
        }
    }
}

//! The edge log: one producer, one consumer, records kept until committed.
//!
//! A byte ring of power-of-two capacity holding variable-length records.
//! Positions are absolute `u64` byte offsets that only grow; a record at
//! position `p` lives at ring offset `p & (capacity - 1)`. Like Aeron's
//! subscriber position, the consumer's `committed` position is shared: the
//! producer may overwrite bytes only below `committed + capacity`, and a
//! consumer that reopens the log resumes at `committed`, so a record read
//! but not committed is read again.
//!
//! Record framing (8-byte aligned): an 8-byte atomic header word
//! `kind << 32 | len` followed by `len` payload bytes padded to 8. A record
//! never wraps: when it does not fit before the end of the ring, a PAD
//! record fills the rest and the record starts at offset 0. Framed records
//! are at most `capacity / 2` bytes, so an empty ring has room for one.
//!
//! **Claim and publication.** The producer claims space by
//! `compare_exchange` on `tail` (fails once a sealer set CLOSED, bit 63),
//! having zeroed the header word of the record *after* the claim (an older
//! lap's bytes may be there). It then writes the payload and publishes with
//! `compare_exchange(0, header)` on the record's header word, as Aeron
//! does. The consumer acquires the header word at its read position (0
//! means "nothing yet") and never reads `tail`, so the two sides share only
//! the cache lines the data needs; `tail` stays on the producer's core.
//!
//! **Sealing** sets CLOSED (no claim can follow), turns a claimed but
//! unpublished record into a TOMB (its producer's publish CAS then fails:
//! an error, never a silent loss) and writes END at the claimed end. A
//! consumer reads what was published, skips tombs, then gets `Sealed`.
//!
//! A producer killed between claim and publish leaves a header of 0 below
//! `tail`; its successor tombs that hole before it continues. Everything the
//! consumer reads from the ring (headers, lengths) is bounds-checked: a
//! scribbled segment yields [`EdgeError::Corrupt`].

use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use crate::error::LayoutError;
use crate::mutant::{self, Mutant, order};
use crate::sync::{AtomicU64, Ordering};
use crate::wait::{Futex, WaitPoint, Waiter};

/// Size of a record header.
pub const RECORD_HEADER: u64 = 8;
/// Smallest ring capacity.
pub const MIN_CAPACITY: u64 = 64;
/// Largest ring capacity (1 TiB).
pub const MAX_CAPACITY: u64 = 1 << 40;
/// Size of [`EdgeControl`] in a segment; the ring follows it.
pub const CONTROL_SIZE: u64 = 768;
/// Largest payload whatever the capacity (2 GiB - 16): a TOMB over a
/// wrapped record (padding plus record) must fit the header's 32-bit
/// length.
pub const MAX_PAYLOAD: u64 = (1 << 31) - 16;
/// Positions stay below this.
pub const MAX_POSITION: u64 = 1 << 62;
/// Bit 63 of `tail`: the log is sealed; claims fail.
pub const CLOSED: u64 = 1 << 63;

const KIND_DATA: u64 = 0x4154_4144; // "DATA"
const KIND_PAD: u64 = 0x2044_4150; // "PAD "
const KIND_END: u64 = 0x2044_4E45; // "END "
const KIND_TOMB: u64 = 0x424D_4F54; // "TOMB"

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
    /// Largest payload: `min(capacity / 2 - RECORD_HEADER, MAX_PAYLOAD)`.
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
        let max_payload = (capacity / 2 - RECORD_HEADER).min(MAX_PAYLOAD);
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

    fn offset(&self, position: u64) -> u64 {
        position & (self.capacity - 1)
    }

    /// Framed size of a record with `len` payload bytes.
    pub fn framed(len: u64) -> u64 {
        RECORD_HEADER + len.next_multiple_of(8)
    }
}

/// A decoded header word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Header {
    /// Nothing published here yet.
    Empty,
    /// A record of `len` payload bytes.
    Data(u64),
    /// Filler up to the end of the ring.
    Pad(u64),
    /// A claim that was never published (dead producer, or sealed before
    /// its publish): `len + 8` bytes to skip, possibly across the ring's end.
    Tomb(u64),
    /// The log was sealed here.
    End,
}

fn header_word(kind: u64, len: u64) -> u64 {
    assert!(
        len <= u64::from(u32::MAX),
        "record header length overflows 32 bits"
    );
    (kind << 32) | len
}

fn decode(word: u64) -> Result<Header, EdgeError> {
    let len = word & 0xFFFF_FFFF;
    match word >> 32 {
        0 if len == 0 => Ok(Header::Empty),
        KIND_DATA => Ok(Header::Data(len)),
        KIND_PAD => Ok(Header::Pad(len)),
        KIND_TOMB => Ok(Header::Tomb(len)),
        KIND_END if len == 0 => Ok(Header::End),
        _ => Err(EdgeError::Corrupt("unknown record header")),
    }
}

/// Keeps a value on its own 128-byte line (two x86-64 cache lines, as
/// crossbeam's `CachePadded` explains: the adjacent-line prefetcher pairs
/// them).
#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

/// The role owners (rarely written).
#[repr(C)]
#[derive(Debug)]
struct Roles {
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
    /// End of the producer's last claim (bits 0..63) | CLOSED (bit 63).
    /// Written by the producer (claim CAS) and a sealer (`fetch_or`); the
    /// consumer never reads it.
    tail: Line<AtomicU64>,
    /// Consumer's committed position. Written only by the consumer.
    committed: Line<AtomicU64>,
    /// The consumer sleeps here waiting for data.
    data_wait: Line<WaitPoint>,
    /// The producer sleeps here waiting for space.
    space_wait: Line<WaitPoint>,
    /// Who holds each role.
    roles: Line<Roles>,
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
    assert!(offset_of!(EdgeControl, roles) == 640);
};

impl EdgeControl {
    /// A control block on the heap with both positions at `start` (for
    /// models and tests; segments are initialised with `init_in_place`).
    /// The ring it goes with must be zeroed.
    ///
    /// # Panics
    /// If `start` is not 8-aligned or not below [`MAX_POSITION`].
    pub fn new(params: EdgeParams, start: u64) -> EdgeControl {
        assert!(
            start.is_multiple_of(8) && start < MAX_POSITION,
            "start must be 8-aligned"
        );
        EdgeControl {
            params,
            tail: Line(AtomicU64::new(start)),
            committed: Line(AtomicU64::new(start)),
            data_wait: Line(WaitPoint::new()),
            space_wait: Line(WaitPoint::new()),
            roles: Line(Roles {
                producer: AtomicU64::new(0),
                consumer: AtomicU64::new(0),
            }),
        }
    }

    /// Initialises a control block in zeroed memory that no other process
    /// uses yet (the ring after it must be zeroed too).
    ///
    /// # Safety
    /// `ptr` is valid for writes of `CONTROL_SIZE` bytes, 128-aligned, zeroed,
    /// and not accessed by anyone else until this returns.
    #[cfg(not(loom))]
    pub unsafe fn init_in_place(ptr: *mut EdgeControl, params: EdgeParams, start: u64) {
        assert!(
            start.is_multiple_of(8) && start < MAX_POSITION,
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
/// of a region of `len()` bytes that stays valid while `self` lives, and
/// `header(off)` must return the atomic word at `off..off + 8` of the same
/// region (payload writes change header words they overlap).
pub unsafe trait RingBytes {
    /// Size of the region in bytes.
    fn len(&self) -> u64;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 8-byte header word at `off`.
    ///
    /// # Safety
    /// `off` is 8-aligned and `off + 8 <= self.len()`.
    unsafe fn header(&self, off: u64) -> &AtomicU64;

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

/// The producer's private state: its position and a cached committed
/// position.
#[derive(Clone, Copy, Debug)]
pub struct ProducerCursor {
    tail: u64,
    committed: u64,
    /// Start of a reservation neither published nor abandoned (leaked):
    /// the next reservation tombs it, so it cannot become a hole that
    /// later records are published behind.
    pending: Option<u64>,
}

impl ProducerCursor {
    /// Position the next record will get.
    pub fn position(&self) -> u64 {
        self.tail
    }
}

/// Space reserved for one record, not yet visible. Only
/// [`Edge::try_reserve`] makes one, and [`Edge::publish`] consumes it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation is invisible until published"]
pub struct Reservation {
    /// Where the record will lie.
    at: RecordAt,
    /// Where a PAD record goes first, if the record wraps.
    pad_at: Option<u64>,
}

impl Reservation {
    /// Where the record will lie once published.
    pub fn record(&self) -> &RecordAt {
        &self.at
    }
}

/// The consumer's private state: read and committed positions.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerCursor {
    read: u64,
    committed: u64,
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

/// A record found by the consumer. Only [`Edge::try_next`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAt {
    position: u64,
    payload_offset: u64,
    len: u64,
    next: u64,
}

impl RecordAt {
    /// Position of the record.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Ring offset of the payload (inside the ring; checked on creation).
    pub fn payload_offset(&self) -> u64 {
        self.payload_offset
    }

    /// Payload length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Position after the record: what to commit once it is handled.
    pub fn next(&self) -> u64 {
        self.next
    }
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
    /// If `geo` does not fit `ring` (every ring access relies on it).
    pub fn with_geometry(ctrl: &'a EdgeControl, ring: &'a M, geo: Geometry) -> Edge<'a, M> {
        assert!(
            geo.capacity.is_power_of_two() && geo.capacity <= ring.len(),
            "geometry does not fit the ring"
        );
        Edge { ctrl, ring, geo }
    }

    /// The ring's shape.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The header word of the record at `position`.
    fn header_at(&self, position: u64) -> &'a AtomicU64 {
        // SAFETY: positions are 8-aligned, so the offset is 8-aligned and
        // below capacity, hence off + 8 <= capacity <= ring.len().
        unsafe { self.ring.header(self.geo.offset(position)) }
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
        claim(&self.ctrl.roles.0.producer, me, is_dead)?;
        // A dead predecessor may have been registered as a sleeper.
        self.ctrl.space_wait.0.clear(PRODUCER_WAITER);
        Ok(())
    }

    /// Takes the consumer role; see [`Edge::claim_producer`].
    ///
    /// # Errors
    /// The identity of the live holder.
    pub fn claim_consumer(&self, me: u64, is_dead: impl Fn(u64) -> bool) -> Result<(), u64> {
        claim(&self.ctrl.roles.0.consumer, me, is_dead)?;
        self.ctrl.data_wait.0.clear(CONSUMER_WAITER);
        Ok(())
    }

    /// Gives the producer role back (no-op unless `me` holds it).
    pub fn release_producer(&self, me: u64) {
        let _ =
            self.ctrl
                .roles
                .0
                .producer
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Gives the consumer role back (no-op unless `me` holds it).
    pub fn release_consumer(&self, me: u64) {
        let _ =
            self.ctrl
                .roles
                .0
                .consumer
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Current `(producer, consumer)` role holders (0 = none).
    pub fn owners(&self) -> (u64, u64) {
        (
            self.ctrl.roles.0.producer.load(Ordering::Acquire),
            self.ctrl.roles.0.consumer.load(Ordering::Acquire),
        )
    }

    // ----- walking published records -----

    fn load_committed(&self) -> Result<u64, EdgeError> {
        let committed = self.ctrl.committed.0.load(Ordering::Acquire);
        if !committed.is_multiple_of(8) || committed >= MAX_POSITION {
            return Err(EdgeError::Corrupt("committed position out of range"));
        }
        Ok(committed)
    }

    /// Size of the record whose header is `header` at `position`, checked
    /// to lie inside the ring and inside `limit` (exclusive end).
    fn span(&self, position: u64, header: Header, limit: u64) -> Result<u64, EdgeError> {
        let off = self.geo.offset(position);
        let size = match header {
            Header::Data(len) => {
                let framed = Geometry::framed(len);
                if len > self.geo.max_payload || off + framed > self.geo.capacity {
                    return Err(EdgeError::Corrupt("record length out of range"));
                }
                framed
            }
            Header::Pad(len) => {
                let to_end = self.geo.capacity - off;
                if len + RECORD_HEADER != to_end {
                    return Err(EdgeError::Corrupt("bad padding record"));
                }
                to_end
            }
            Header::Tomb(len) => {
                if !len.is_multiple_of(8) {
                    return Err(EdgeError::Corrupt("bad tomb record"));
                }
                len + RECORD_HEADER
            }
            Header::Empty | Header::End => return Ok(0),
        };
        if position + size > limit {
            return Err(EdgeError::Corrupt("record runs past the writable ring"));
        }
        Ok(size)
    }

    /// Loads `tail`, checking it against `committed`.
    fn load_tail(&self, committed: u64) -> Result<(u64, bool), EdgeError> {
        let raw = self.ctrl.tail.0.load(Ordering::Acquire);
        let tail = raw & !CLOSED;
        if !tail.is_multiple_of(8) || tail < committed || tail - committed > self.geo.capacity {
            return Err(EdgeError::Corrupt("tail outside the ring"));
        }
        Ok((tail, raw & CLOSED != 0))
    }

    /// Turns the unpublished record at `start` into a TOMB reaching `end`
    /// (CAS from 0); false if the header was no longer 0 (published, or
    /// tombed by someone else). SeqCst like a publish, so `wake_consumer`
    /// may follow it; Acquire on failure, so the caller can read what won.
    fn tomb(&self, start: u64, end: u64) -> bool {
        let tomb = header_word(KIND_TOMB, end - start - RECORD_HEADER);
        self.header_at(start)
            .compare_exchange(0, tomb, Ordering::SeqCst, Ordering::Acquire)
            .is_ok()
    }

    /// Walks the records from `from` to `until`, turning every claimed but
    /// unpublished record into a TOMB reaching `until`. Returns where END
    /// was found, if it was.
    ///
    /// Safe against a live producer only once `until` is fixed (the log is
    /// sealed, or the caller holds the producer role): no claim can then
    /// reach into `from..until`, so only headers are read and written.
    fn tomb_holes(&self, from: u64, until: u64) -> Result<Option<u64>, EdgeError> {
        let mut at = from;
        while at < until {
            let header = decode(self.header_at(at).load(Ordering::Acquire))?;
            match header {
                Header::End => return Ok(Some(at)),
                Header::Empty => {
                    // On failure the producer published here first: the
                    // next turn reads it.
                    self.tomb(at, until);
                }
                _ => at += self.span(at, header, until)?,
            }
        }
        if at != until {
            return Err(EdgeError::Corrupt("records do not end at the tail"));
        }
        Ok(None)
    }

    // ----- producer -----

    /// The producer's starting state, after tombing a dead predecessor's
    /// claimed but unpublished record (the caller holds the producer role).
    ///
    /// # Errors
    /// `Sealed`, or `Corrupt` if the stored positions or headers are
    /// inconsistent.
    pub fn producer_cursor(&self) -> Result<ProducerCursor, EdgeError> {
        let committed = self.load_committed()?;
        let (tail, sealed) = self.load_tail(committed)?;
        if sealed {
            return Err(EdgeError::Sealed);
        }
        if self.tomb_holes(committed, tail)?.is_some() {
            return Err(EdgeError::Corrupt("END before the tail of an unsealed log"));
        }
        Ok(ProducerCursor {
            tail,
            committed,
            pending: None,
        })
    }

    /// Bytes a record of `len` needs at `tail`: padding, the record, and
    /// the next header word (zeroed before the claim).
    fn needed(&self, tail: u64, len: u64) -> u64 {
        let framed = Geometry::framed(len);
        let to_end = self.geo.capacity - self.geo.offset(tail);
        RECORD_HEADER
            + if framed <= to_end {
                framed
            } else {
                to_end + framed
            }
    }

    /// Claims room for a record of `len` bytes. Nothing is visible until
    /// [`Edge::publish`]; a reservation not published must be given back
    /// with [`Edge::abandon`], or the consumer waits at it until the
    /// producer role is taken over.
    ///
    /// # Errors
    /// `TooLarge`, `Full`, `Sealed`, or `Corrupt` if the committed position
    /// read from the segment is inconsistent.
    pub fn try_reserve(
        &self,
        cur: &mut ProducerCursor,
        len: u64,
    ) -> Result<Reservation, EdgeError> {
        if let Some(start) = cur.pending.take() {
            // A leaked reservation: tomb it (a sealer may have already).
            self.tomb(start, cur.tail);
        }
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
            let committed = self.load_committed()?;
            if committed < cur.committed || committed > cur.tail {
                return Err(EdgeError::Corrupt(
                    "committed position outside the written range",
                ));
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
        let to_end = self.geo.capacity - self.geo.offset(cur.tail);
        let framed = Geometry::framed(len);
        let (pad_at, position) = if framed <= to_end {
            (None, cur.tail)
        } else {
            (Some(cur.tail), cur.tail + to_end)
        };
        let next = position + framed;
        // The next record's header, and on a wrap the record's own, must
        // read "nothing yet" before anything after them can be published:
        // an older lap's bytes may be there.
        if !mutant::active(Mutant::EdgeSkipZeroNext) {
            self.header_at(next).store(0, Ordering::Relaxed);
        }
        if pad_at.is_some() {
            self.header_at(position).store(0, Ordering::Relaxed);
        }
        // Claim. Release orders the zeroing before it, for a sealer that
        // writes END at `next` after its Acquire `fetch_or`.
        let claimed = if mutant::active(Mutant::EdgeClaimPlainStore) {
            self.ctrl.tail.0.store(next, Ordering::Release);
            Ok(cur.tail)
        } else {
            self.ctrl
                .tail
                .0
                .compare_exchange(cur.tail, next, Ordering::Release, Ordering::Relaxed)
        };
        match claimed {
            Ok(_) => {}
            Err(actual) if actual & CLOSED != 0 => return Err(EdgeError::Sealed),
            Err(_) => return Err(EdgeError::Corrupt("tail moved under the producer")),
        }
        cur.tail = next;
        cur.pending = Some(pad_at.unwrap_or(position));
        Ok(Reservation {
            at: RecordAt {
                position,
                payload_offset: self.geo.offset(position) + RECORD_HEADER,
                len,
                next,
            },
            pad_at,
        })
    }

    /// Copies `payload` into a reservation.
    ///
    /// # Panics
    /// If `payload.len()` differs from the reserved length.
    pub fn fill(&self, res: &Reservation, payload: &[u8]) {
        assert_eq!(
            payload.len() as u64,
            res.at.len,
            "payload length differs from the reservation"
        );
        assert!(
            res.at.payload_offset + res.at.len <= self.geo.capacity,
            "reservation of another ring"
        );
        // SAFETY: the reservation lies inside the ring, in space the
        // producer claimed and the consumer does not read until the header
        // is published.
        unsafe { self.ring.write(res.at.payload_offset, payload) };
    }

    /// Publishes the header word at `position` by CAS from 0.
    fn publish_header(&self, position: u64, word: u64) -> Result<(), EdgeError> {
        let header = self.header_at(position);
        // Release pairs with the consumer's Acquire load of this header in
        // `try_next`: the payload and the zeroed next header written before
        // are visible to it. The CAS (not a store) fails if a sealer tombed
        // the claim first. SeqCst (no dearer than Release on x86-64, a
        // locked instruction either way) lets `wake_consumer` skip a fence.
        let publish = order(
            Ordering::SeqCst,
            Mutant::EdgePublishRelaxed,
            Ordering::Relaxed,
        );
        match header.compare_exchange(0, word, publish, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(found) if matches!(decode(found), Ok(Header::Tomb(_))) => Err(EdgeError::Sealed),
            Err(_) => Err(EdgeError::Corrupt("header changed under the producer")),
        }
    }

    /// Makes a reserved record visible and returns its position. Does not
    /// wake the consumer: call [`Edge::wake_consumer`] (once per batch).
    ///
    /// # Errors
    /// `Sealed` if the log was sealed since the reservation (the record is
    /// dropped), `Corrupt` if someone else wrote the header.
    ///
    /// # Panics
    /// If `res` is not the cursor's latest reservation.
    pub fn publish(&self, cur: &mut ProducerCursor, res: Reservation) -> Result<u64, EdgeError> {
        assert_eq!(res.at.next, cur.tail, "stale reservation");
        cur.pending = None;
        if let Some(pad_at) = res.pad_at {
            let pad = header_word(KIND_PAD, res.at.position - pad_at - RECORD_HEADER);
            self.publish_header(pad_at, pad)?;
        }
        self.publish_header(res.at.position, header_word(KIND_DATA, res.at.len))?;
        Ok(res.at.position)
    }

    /// Reserves, fills and publishes a record: [`Edge::try_reserve`],
    /// [`Edge::fill`], [`Edge::publish`]. Does not wake the consumer.
    ///
    /// # Errors
    /// Those of `try_reserve` and `publish`.
    pub fn try_push(&self, cur: &mut ProducerCursor, payload: &[u8]) -> Result<u64, EdgeError> {
        let res = self.try_reserve(cur, payload.len() as u64)?;
        self.fill(&res, payload);
        self.publish(cur, res)
    }

    /// Gives a reservation back unpublished: it becomes a TOMB the consumer
    /// skips.
    ///
    /// # Panics
    /// If `res` is not the cursor's latest reservation.
    pub fn abandon(&self, cur: &mut ProducerCursor, res: Reservation) {
        assert_eq!(res.at.next, cur.tail, "stale reservation");
        cur.pending = None;
        // A sealer may have tombed it already; either way it is a tomb (and
        // then the sealer's own notify woke the consumer).
        self.tomb(res.pad_at.unwrap_or(res.at.position), res.at.next);
    }

    /// Wakes the consumer if it sleeps; call after [`Edge::publish`] (whose
    /// SeqCst header CAS this relies on instead of a fence).
    #[inline]
    pub fn wake_consumer<F: Futex + ?Sized>(&self, futex: &F) {
        self.ctrl.data_wait.0.wake_after_seqcst_rmw(futex);
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
    /// `Corrupt` if the stored position is out of range.
    pub fn consumer_cursor(&self) -> Result<ConsumerCursor, EdgeError> {
        let committed = self.load_committed()?;
        Ok(ConsumerCursor {
            read: committed,
            committed,
        })
    }

    /// Finds the next record, if one is published.
    ///
    /// # Errors
    /// `Sealed` once the log is sealed and everything was read; `Corrupt`
    /// when a header read from the segment is out of range.
    #[inline]
    pub fn try_next(&self, cur: &mut ConsumerCursor) -> Result<Option<RecordAt>, EdgeError> {
        // The producer writes nothing at or past committed + capacity.
        let limit = cur.committed + self.geo.capacity;
        loop {
            if cur.read + RECORD_HEADER > limit {
                return Err(EdgeError::Corrupt("read past the writable ring"));
            }
            // Acquire pairs with the Release publish CAS: the payload of a
            // published record is fully written.
            let load = order(
                Ordering::Acquire,
                Mutant::EdgeHeaderLoadRelaxed,
                Ordering::Relaxed,
            );
            let header = decode(self.header_at(cur.read).load(load))?;
            let size = self.span(cur.read, header, limit)?;
            match header {
                Header::Empty => return Ok(None),
                Header::End => return Err(EdgeError::Sealed),
                Header::Pad(_) | Header::Tomb(_) => cur.read += size,
                Header::Data(len) => {
                    let record = RecordAt {
                        position: cur.read,
                        payload_offset: self.geo.offset(cur.read) + RECORD_HEADER,
                        len,
                        next: cur.read + size,
                    };
                    cur.read = record.next;
                    return Ok(Some(record));
                }
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
        assert!(
            record.payload_offset + record.len <= self.geo.capacity,
            "record of another ring"
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
        let limit = from + self.geo.capacity;
        let mut at = from;
        while at < pos {
            let Ok(header) = decode(self.header_at(at).load(Ordering::Acquire)) else {
                return false;
            };
            match self.span(at, header, limit) {
                Ok(size) if size > 0 => at += size,
                _ => return false,
            }
        }
        at == pos
    }

    /// Sleeps until a record is published at `cur`'s read position, the
    /// log is sealed, or `deadline` passes. Returns false on timeout.
    pub fn wait_for_data<F: Futex + ?Sized>(
        &self,
        cur: &ConsumerCursor,
        futex: &F,
        spins: u32,
        deadline: Option<Instant>,
    ) -> bool {
        let header = self.header_at(cur.read);
        self.ctrl
            .data_wait
            .0
            .wait_until(futex, CONSUMER_WAITER, spins, deadline, || {
                header.load(Ordering::Relaxed) != 0
            })
    }

    /// Whether a header is published at `cur`'s read position (a record, a
    /// skip, or the end): the condition a sleeping consumer re-checks.
    pub fn has_next(&self, cur: &ConsumerCursor) -> bool {
        self.header_at(cur.read).load(Ordering::Relaxed) != 0
    }

    /// The wait point a consumer sleeps on, for waiting on it together
    /// with others ([`crate::wait::wait_any`]).
    pub fn data_wait_point(&self) -> &'a WaitPoint {
        &self.ctrl.data_wait.0
    }

    // ----- sealing -----

    /// Seals the log: writes END into the first unpublished header, so
    /// every later publish fails with `Sealed` and a consumer reads what
    /// was published, then gets `Sealed`. Wakes both sides. Returns the
    /// position of END: everything published lies before it.
    ///
    /// # Errors
    /// `Corrupt` if the published headers are inconsistent.
    pub fn seal<F: Futex + ?Sized>(&self, futex: &F) -> Result<u64, EdgeError> {
        // AcqRel: the Acquire half synchronises with the producer's claim
        // CAS, so the header it zeroed at the claimed end is visible; after
        // this no claim succeeds, so `committed..end` is fixed.
        let end = self.ctrl.tail.0.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let committed = self.load_committed()?;
        if end < committed || end - committed > self.geo.capacity || !end.is_multiple_of(8) {
            return Err(EdgeError::Corrupt("tail outside the ring"));
        }
        if self.tomb_holes(committed, end)?.is_some() {
            return Err(EdgeError::Corrupt("END before the tail"));
        }
        let end_word = header_word(KIND_END, 0);
        match self
            .header_at(end)
            .compare_exchange(0, end_word, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            // Another sealer got there first.
            Err(found) if found == end_word => {}
            Err(_) => return Err(EdgeError::Corrupt("header at the tail not free")),
        }
        self.ctrl.data_wait.0.notify(futex);
        self.ctrl.space_wait.0.notify(futex);
        Ok(end)
    }
}

/// What [`Edge::carry_into`] moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Records copied, at their positions.
    pub records: u64,
    /// Spans that could not be read (a corrupt header, and everything up
    /// to the end after it): each held at least one record, now lost.
    pub lost_spans: u64,
    /// Bytes of those spans.
    pub lost_bytes: u64,
}

impl<M: RingBytes> Edge<'_, M> {
    /// Copies the records of `from..end` of this sealed log into `dst`, a
    /// fresh log of the same capacity whose positions start at `from`,
    /// each record at its own position (skips and padding too), and moves
    /// `dst`'s tail to `end`: a consumer of `dst` reads them as it would
    /// have read them here, and positions committed here stay boundaries.
    ///
    /// From the first header that is not a consistent record on, the rest
    /// of `from..end` becomes one TOMB in `dst` and is counted as lost.
    ///
    /// The caller sealed this log (`end` is what `seal` returned, `from`
    /// the committed position read after it), so no producer writes into
    /// `from..end`; nobody else may use `dst` until this returns.
    ///
    /// # Errors
    /// `Corrupt` if `dst` is not fresh at `from` or has another capacity,
    /// or `from..end` does not fit the ring.
    pub fn carry_into<N: RingBytes>(
        &self,
        dst: &Edge<'_, N>,
        from: u64,
        end: u64,
    ) -> Result<Carried, EdgeError> {
        if dst.geo.capacity != self.geo.capacity {
            return Err(EdgeError::Corrupt("carry between rings of other sizes"));
        }
        let dst_committed = dst.load_committed()?;
        let (dst_tail, _) = dst.load_tail(dst_committed)?;
        if dst_committed != from || dst_tail != from {
            return Err(EdgeError::Corrupt(
                "carry into a log not fresh at the start",
            ));
        }
        // A sealed log keeps a header's room free at its end.
        if from > end || end - from > self.geo.capacity - RECORD_HEADER || !end.is_multiple_of(8) {
            return Err(EdgeError::Corrupt("carry span outside the ring"));
        }
        let mut carried = Carried::default();
        let mut buf = Vec::new();
        let mut at = from;
        while at < end {
            let word = self.header_at(at).load(Ordering::Acquire);
            let header = decode(word);
            let size = header.and_then(|h| self.span(at, h, end));
            match (header, size) {
                (Ok(Header::Data(len)), Ok(size)) => {
                    let off = self.geo.offset(at) + RECORD_HEADER;
                    buf.resize(len as usize, 0);
                    // SAFETY: `span` checked the payload lies inside the
                    // ring; the log is sealed, so nobody writes it, and
                    // `dst` is ours alone until we return.
                    unsafe {
                        self.ring.read(off, &mut buf);
                        dst.ring.write(off, &buf);
                    }
                    // Relaxed: `dst` becomes visible to others only through
                    // a later Release (the handoff publication).
                    dst.header_at(at).store(word, Ordering::Relaxed);
                    carried.records += 1;
                    at += size;
                }
                (Ok(Header::Pad(_) | Header::Tomb(_)), Ok(size)) => {
                    dst.header_at(at).store(word, Ordering::Relaxed);
                    at += size;
                }
                _ => {
                    carried.lost_spans += 1;
                    carried.lost_bytes = end - at;
                    dst.tomb_span(at, end);
                    at = end;
                }
            }
        }
        if !mutant::active(Mutant::CarrySkipTail) {
            dst.ctrl.tail.0.store(end, Ordering::Relaxed);
        }
        Ok(carried)
    }

    /// Writes TOMBs over `start..end` of a log nobody else uses yet, in
    /// pieces whose lengths fit a header.
    fn tomb_span(&self, mut start: u64, end: u64) {
        const PIECE: u64 = 1 << 31;
        while start < end {
            let len = (end - start).min(PIECE);
            let word = header_word(KIND_TOMB, len - RECORD_HEADER);
            self.header_at(start).store(word, Ordering::Relaxed);
            start += len;
        }
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
            edge.try_push(&mut p, &data).unwrap();
            let (got, next) = pop(&edge, &mut c).unwrap().unwrap();
            assert_eq!(got, data);
            edge.commit(&mut c, next, &NoFutex).unwrap();
        }
        assert_eq!(pop(&edge, &mut c).unwrap(), None);
    }

    #[test]
    fn full_until_commit_and_reopen_resumes_at_commit() {
        // 64-byte ring, 16-byte framed records, 8 bytes kept for the next
        // header: three fit.
        let heap = HeapEdge::new(64, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        edge.try_push(&mut p, &[1; 8]).unwrap();
        edge.try_push(&mut p, &[2; 8]).unwrap();
        edge.try_push(&mut p, &[3; 8]).unwrap();
        assert_eq!(edge.try_push(&mut p, &[4; 8]), Err(EdgeError::Full));
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
        edge.try_push(&mut p, &[4; 8]).unwrap();
        assert_eq!(edge.try_push(&mut p, &[5; 8]), Err(EdgeError::Full));
        // A producer that takes over finds the frontier after record 4.
        let resumed = edge.producer_cursor().unwrap();
        assert_eq!(resumed.position(), p.position());
    }

    #[test]
    fn commit_rejects_positions_that_are_not_boundaries() {
        let heap = HeapEdge::new(256, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        edge.try_push(&mut p, &[1; 20]).unwrap();
        edge.try_push(&mut p, &[2; 20]).unwrap();
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
        edge.try_push(&mut p, &[7; 120]).unwrap();
    }

    #[test]
    fn seal_fails_late_publish_and_ends_the_stream() {
        let heap = HeapEdge::new(128, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        edge.try_push(&mut p, b"kept").unwrap();
        let res = edge.try_reserve(&mut p, 4).unwrap();
        edge.fill(&res, b"lost");
        edge.seal(&NoFutex).unwrap();
        assert_eq!(edge.publish(&mut p, res), Err(EdgeError::Sealed));
        assert_eq!(edge.producer_cursor().unwrap_err(), EdgeError::Sealed);
        let mut c = edge.consumer_cursor().unwrap();
        assert_eq!(pop(&edge, &mut c).unwrap().unwrap().0, b"kept");
        assert_eq!(pop(&edge, &mut c), Err(EdgeError::Sealed));
    }

    #[test]
    fn carried_records_keep_their_positions() {
        let heap = HeapEdge::new(128, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        let mut c = edge.consumer_cursor().unwrap();
        // Move the ring along so the carried span wraps, with padding.
        for i in 0..5u8 {
            edge.try_push(&mut p, &[i; 16]).unwrap();
            let (_, next) = pop(&edge, &mut c).unwrap().unwrap();
            edge.commit(&mut c, next, &NoFutex).unwrap();
        }
        let abandoned = edge.try_reserve(&mut p, 3).unwrap();
        edge.abandon(&mut p, abandoned);
        let first = edge.try_push(&mut p, b"one").unwrap();
        edge.try_push(&mut p, &[7; 24]).unwrap();
        let claimed = edge.try_reserve(&mut p, 5).unwrap();
        let end = edge.seal(&NoFutex).unwrap();
        assert_eq!(edge.publish(&mut p, claimed), Err(EdgeError::Sealed));
        let from = edge.positions().1;

        let moved = HeapEdge::new(128, from);
        let dst = moved.edge();
        let carried = edge.carry_into(&dst, from, end).unwrap();
        assert_eq!((carried.records, carried.lost_spans), (2, 0));
        let mut c = dst.consumer_cursor().unwrap();
        let (one, _) = pop(&dst, &mut c).unwrap().unwrap();
        assert_eq!(one, b"one");
        assert_eq!(c.read_position(), first + 16, "same position as before");
        assert_eq!(pop(&dst, &mut c).unwrap().unwrap().0, vec![7; 24]);
        assert_eq!(
            pop(&dst, &mut c).unwrap(),
            None,
            "the tombed claim is skipped"
        );
        // The new log goes on from the old one's end.
        let mut p = dst.producer_cursor().unwrap();
        assert_eq!(dst.try_push(&mut p, b"next").unwrap(), end);
        assert_eq!(pop(&dst, &mut c).unwrap().unwrap().0, b"next");
    }

    #[test]
    fn a_corrupt_header_is_carried_as_a_counted_loss() {
        let heap = HeapEdge::new(256, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        edge.try_push(&mut p, b"good").unwrap();
        let bad = edge.try_push(&mut p, b"scribbled").unwrap();
        edge.try_push(&mut p, b"after").unwrap();
        let end = edge.seal(&NoFutex).unwrap();
        edge.header_at(bad).store(u64::MAX, Ordering::Relaxed);

        let moved = HeapEdge::new(256, 0);
        let dst = moved.edge();
        let carried = edge.carry_into(&dst, 0, end).unwrap();
        assert_eq!(
            carried,
            Carried {
                records: 1,
                lost_spans: 1,
                lost_bytes: end - bad
            }
        );
        let mut c = dst.consumer_cursor().unwrap();
        assert_eq!(pop(&dst, &mut c).unwrap().unwrap().0, b"good");
        assert_eq!(pop(&dst, &mut c).unwrap(), None);
        assert_eq!(c.read_position(), end);
        // Only a fresh log of the same size takes a carry.
        assert!(edge.carry_into(&dst, 0, end).is_err());
        assert!(
            edge.carry_into(&HeapEdge::new(128, 0).edge(), 0, end)
                .is_err()
        );
    }

    #[test]
    fn positions_start_where_asked() {
        let heap = HeapEdge::new(64, 1 << 40);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        assert_eq!(edge.try_push(&mut p, &[1; 3]).unwrap(), 1 << 40);
        let mut c = edge.consumer_cursor().unwrap();
        assert_eq!(pop(&edge, &mut c).unwrap().unwrap().1, (1 << 40) + 16);
    }

    #[test]
    fn a_leaked_reservation_is_tombed_by_the_next_one() {
        let heap = HeapEdge::new(256, 0);
        let edge = heap.edge();
        let mut p = edge.producer_cursor().unwrap();
        let leaked = edge.try_reserve(&mut p, 5).unwrap();
        drop(leaked);
        edge.try_push(&mut p, b"after").unwrap();
        let mut c = edge.consumer_cursor().unwrap();
        assert_eq!(
            pop(&edge, &mut c).unwrap().unwrap().0,
            b"after",
            "no hole before the record"
        );
    }

    #[test]
    fn payloads_are_capped_so_a_tomb_fits_its_header() {
        let params = EdgeParams::new(1 << 40).unwrap();
        assert_eq!(params.max_payload, MAX_PAYLOAD);
        // The largest tomb: padding of almost a record plus a record.
        let widest = 2 * Geometry::framed(MAX_PAYLOAD) - 16;
        assert!(widest <= u64::from(u32::MAX));
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
                        match edge.try_push(&mut p, &data) {
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

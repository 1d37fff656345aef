//! The FabricQueue: a bounded multi-producer multi-consumer queue whose
//! claims name their claimant, so a process killed mid-operation is
//! repaired instead of wedging the queue.
//!
//! Based on Dmitry Vyukov's bounded MPMC queue (as in crossbeam's
//! `ArrayQueue`), with one change that matters across processes: each slot
//! has one `AtomicU64` **state word** `lap << 32 | tag << 24 | owner`
//! instead of a bare stamp, and every transition is a CAS on it.
//!
//! * `lap` (32 bits): the lap of the position the state belongs to
//!   (`position / capacity`, truncated). Laps are only compared for equality
//!   with the lap of a freshly loaded position (or its neighbours), so they
//!   wrap safely unless a thread stalls for 2^32 laps between loading a
//!   position and its CAS.
//! * `tag` (8 bits): FREE, WRITING, READY, READING or TOMB.
//! * `owner` (24 bits): the claimant's [`Incarnation`] while WRITING or
//!   READING; zero otherwise.
//!
//! **Push** at `tail == pos`: if the slot is FREE@lap(pos), claim it by CAS
//! to WRITING@lap|me, then CAS `tail` forward; if it holds lap(pos) - 1 the
//! queue is full; if it holds lap(pos) in any other state, someone took
//! `pos` without advancing `tail` yet, so help CAS `tail` forward. Then
//! write the payload and publish with a CAS WRITING@lap|me -> READY@lap.
//! **Pop** mirrors it at `head`: READY -> READING@lap|me, advance `head`,
//! copy, then READING@lap|me -> FREE@lap+1; a TOMB is turned into
//! FREE@lap+1 and skipped.
//!
//! **Repair** of a dead incarnation turns its WRITING slots into TOMBs and
//! its READING slots into FREE@lap+1, each by CAS, so a claimant that was
//! only slow (not dead) finds its publish or release failing: an error,
//! never a silent loss. A record whose reader died mid-read is dropped
//! (pop is at-most-once; the edge log is the at-least-once path).
//!
//! **Sealing** (before relocation) sets CLOSED (bit 63) in `tail`, so no
//! `tail` CAS succeeds after it; handles the slot at `tail`, which a
//! producer that read `tail` before the seal may still claim; and turns
//! every WRITING slot into a TOMB. A producer whose `tail` CAS fails on
//! exactly `pos | CLOSED` claimed past the sealed end: it tombs its own
//! slot and reports `Sealed`. Consumers drain what was published and then
//! get `Sealed`.
//!
//! Participants register in a table of [`MAX_PARTICIPANTS`] entries in the
//! control block (holder token, incarnation); the entry's index is the
//! participant's waiter bit. Incarnations come from a counter and skip any
//! value still held by an entry, and an entry is freed only by a clean
//! detach or after its repair, so an owner field never names two live
//! incarnations.

use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use crate::crash::{self, CrashPoint};
use crate::edge::RingBytes;
use crate::error::LayoutError;
use crate::mutant::{self, Mutant, order};
use crate::sync::{AtomicU64, Ordering};
use crate::wait::{Futex, WaitPoint, Waiter};

/// Size of [`QueueControl`] in a segment; the slots follow it.
pub const CONTROL_SIZE: u64 = 1920;
/// Bytes before a slot's payload: the state word and the length word.
pub const SLOT_HEADER: u64 = 16;
/// Largest capacity in slots.
pub const MAX_CAPACITY: u64 = 1 << 32;
/// Largest stride (payload bytes per slot): 1 GiB.
pub const MAX_STRIDE: u64 = 1 << 30;
/// Bit 63 of `tail`: the queue is sealed; claims fail.
pub const CLOSED: u64 = 1 << 63;
/// Positions stay below this.
pub const MAX_POSITION: u64 = 1 << 62;
/// Entries in the participant table (one waiter bit each).
#[cfg(not(loom))]
pub const MAX_PARTICIPANTS: usize = 64;
/// Entries in the participant table (fewer under loom, which tracks every
/// atomic).
#[cfg(loom)]
pub const MAX_PARTICIPANTS: usize = 4;
/// Width of the owner field of a state word.
pub const OWNER_BITS: u32 = 24;
const OWNER_MASK: u64 = (1 << OWNER_BITS) - 1;

/// A participant's incarnation: non-zero, below 2^24. Never reused while a
/// claim of an older incarnation with the same value may be unrepaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Incarnation(u32);

impl Incarnation {
    /// Wraps a raw value.
    ///
    /// # Errors
    /// `value` is zero or does not fit [`OWNER_BITS`].
    pub fn new(value: u32) -> Result<Incarnation, QueueError> {
        if value == 0 || u64::from(value) > OWNER_MASK {
            return Err(QueueError::Corrupt("incarnation out of range"));
        }
        Ok(Incarnation(value))
    }

    /// The raw value.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A slot's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Free = 0,
    Writing = 1,
    Ready = 2,
    Reading = 3,
    Tomb = 4,
}

/// A decoded state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    lap: u32,
    tag: Tag,
    owner: u32,
}

impl State {
    fn new(lap: u32, tag: Tag, owner: u32) -> State {
        State { lap, tag, owner }
    }

    fn word(self) -> u64 {
        pack_state(self.lap, self.tag as u8, self.owner)
    }

    fn decode(word: u64) -> Result<State, QueueError> {
        let (lap, tag, owner) = unpack_state(word);
        let tag = match tag {
            0 => Tag::Free,
            1 => Tag::Writing,
            2 => Tag::Ready,
            3 => Tag::Reading,
            4 => Tag::Tomb,
            _ => return Err(QueueError::Corrupt("unknown slot tag")),
        };
        Ok(State { lap, tag, owner })
    }
}

/// A slot state word `lap << 32 | tag << 24 | owner`, the layout the
/// queue's slots and the topic's partitions share.
#[inline]
pub(crate) fn pack_state(lap: u32, tag: u8, owner: u32) -> u64 {
    (u64::from(lap) << 32) | (u64::from(tag) << OWNER_BITS) | (u64::from(owner) & OWNER_MASK)
}

/// `(lap, tag, owner)` of a slot state word.
#[inline]
pub(crate) fn unpack_state(word: u64) -> (u32, u8, u32) {
    (
        (word >> 32) as u32,
        ((word >> OWNER_BITS) & 0xFF) as u8,
        (word & OWNER_MASK) as u32,
    )
}

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueError {
    /// Every slot holds a record not yet taken.
    Full,
    /// The record is larger than the queue's stride.
    TooLarge {
        /// Payload length asked for.
        len: u64,
        /// The stride.
        max: u64,
    },
    /// The queue is sealed: no push succeeds, and pops get this once the
    /// published records are drained.
    Sealed,
    /// This claim was repaired (its claimant was judged dead) before it was
    /// published: the record was not delivered.
    ClaimRepaired,
    /// This read was repaired (its reader was judged dead) before it was
    /// released: the bytes read may be torn and must be discarded.
    ReadRepaired,
    /// Every participant entry is held by a live process.
    TooManyParticipants,
    /// A live process holds the repair lock; try again later.
    RepairBusy,
    /// The participant to repair is alive.
    Alive,
    /// A blocking call ran past its deadline.
    TimedOut,
    /// The shared bytes are inconsistent (scribbled on).
    Corrupt(&'static str),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Full => write!(f, "queue is full"),
            QueueError::TooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds the stride of {max} bytes")
            }
            QueueError::Sealed => write!(f, "queue is sealed"),
            QueueError::ClaimRepaired => write!(
                f,
                "the claim was repaired as if its producer had died; the record was not delivered"
            ),
            QueueError::ReadRepaired => write!(
                f,
                "the read was repaired as if its consumer had died; the bytes may be torn"
            ),
            QueueError::TooManyParticipants => write!(
                f,
                "all {MAX_PARTICIPANTS} participant entries are held by live processes"
            ),
            QueueError::RepairBusy => write!(f, "another live process is repairing the queue"),
            QueueError::Alive => write!(f, "the participant to repair is alive"),
            QueueError::TimedOut => write!(f, "timed out"),
            QueueError::Corrupt(what) => write!(f, "queue corrupt: {what}"),
        }
    }
}

impl std::error::Error for QueueError {}

/// Immutable parameters, written once by the creator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct QueueParams {
    /// Number of slots, `1..=MAX_CAPACITY`.
    pub capacity: u64,
    /// Largest payload per record, `1..=MAX_STRIDE`.
    pub stride: u64,
    /// Bytes per slot: `SLOT_HEADER + stride` rounded up to 8.
    pub slot_size: u64,
    /// Reserved, zero.
    pub reserved: [u64; 13],
}

impl QueueParams {
    /// Parameters for `capacity` slots of `stride` payload bytes.
    ///
    /// # Errors
    /// Either is zero or past its maximum.
    pub fn new(capacity: u64, stride: u64) -> Result<QueueParams, LayoutError> {
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(LayoutError::Corrupt(
                "queue capacity must be 1 to 2^32 slots",
            ));
        }
        if !(1..=MAX_STRIDE).contains(&stride) {
            return Err(LayoutError::Corrupt("queue stride must be 1 B to 1 GiB"));
        }
        Ok(QueueParams {
            capacity,
            stride,
            slot_size: (SLOT_HEADER + stride).next_multiple_of(8),
            reserved: [0; 13],
        })
    }

    /// Bytes the slots take.
    pub fn slots_len(&self) -> u64 {
        self.capacity * self.slot_size
    }
}

/// The validated shape of a queue, cached by handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of slots.
    pub capacity: u64,
    /// Largest payload.
    pub stride: u64,
    /// Bytes per slot.
    pub slot_size: u64,
    /// `log2(capacity)` when it is a power of two (positions then split
    /// with a shift and a mask).
    shift: Option<u32>,
}

impl Geometry {
    /// Validates parameters read from a segment whose slot region has
    /// `slots_len` bytes.
    ///
    /// # Errors
    /// [`LayoutError::Corrupt`] or [`LayoutError::TooSmall`].
    pub fn validate(params: &QueueParams, slots_len: u64) -> Result<Geometry, LayoutError> {
        let expected = QueueParams::new(params.capacity, params.stride)?;
        if params.slot_size != expected.slot_size {
            return Err(LayoutError::Corrupt(
                "queue slot size inconsistent with stride",
            ));
        }
        let needed = params
            .capacity
            .checked_mul(params.slot_size)
            .ok_or(LayoutError::Corrupt("queue size overflows"))?;
        if slots_len < needed {
            return Err(LayoutError::TooSmall {
                size: slots_len,
                needed,
            });
        }
        Ok(Geometry {
            capacity: params.capacity,
            stride: params.stride,
            slot_size: params.slot_size,
            shift: params
                .capacity
                .is_power_of_two()
                .then(|| params.capacity.trailing_zeros()),
        })
    }

    /// `(slot index, lap)` of a position.
    #[inline]
    fn split(&self, position: u64) -> (u64, u32) {
        match self.shift {
            Some(shift) => (position & (self.capacity - 1), (position >> shift) as u32),
            None => (position % self.capacity, (position / self.capacity) as u32),
        }
    }
}

/// Keeps a value on its own 128-byte line (two x86-64 cache lines, which
/// the adjacent-line prefetcher pairs).
#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

/// Rarely written words.
#[repr(C)]
#[derive(Debug)]
struct Admin {
    /// Holder token of the repair lock; 0 when free.
    repair_lock: AtomicU64,
    /// Source of incarnations.
    next_incarnation: AtomicU64,
}

/// Event counters (Relaxed; read by tests and `grafos status`).
#[repr(C)]
#[derive(Debug)]
struct Counters {
    tail_helps: AtomicU64,
    head_helps: AtomicU64,
    claims_repaired: AtomicU64,
    reads_repaired: AtomicU64,
    tombs_skipped: AtomicU64,
    late_publishes: AtomicU64,
    abandoned: AtomicU64,
    seal_tombs: AtomicU64,
    repairs: AtomicU64,
}

/// One participant entry.
#[repr(C)]
#[derive(Debug)]
struct Entry {
    /// Holder token (a packed process identity); 0 when free.
    holder: AtomicU64,
    /// The holder's incarnation; 0 until it is set after the holder CAS.
    incarnation: AtomicU64,
}

/// The control block at the start of a queue's body (1920 bytes; see
/// docs/LAYOUT.md). The slots follow it.
#[repr(C)]
#[derive(Debug)]
pub struct QueueControl {
    params: QueueParams,
    /// Next position to claim (bits 0..63) | CLOSED (bit 63). Written by
    /// producers (claim and help CAS) and a sealer (`fetch_or`).
    tail: Line<AtomicU64>,
    /// Next position to take. Written by consumers (CAS).
    head: Line<AtomicU64>,
    /// Consumers sleep here waiting for records.
    data_wait: Line<WaitPoint>,
    /// Producers sleep here waiting for free slots.
    space_wait: Line<WaitPoint>,
    admin: Line<Admin>,
    counters: Line<Counters>,
    participants: Line<[Entry; MAX_PARTICIPANTS]>,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<QueueParams>() == 128);
    assert!(size_of::<QueueControl>() == CONTROL_SIZE as usize);
    assert!(offset_of!(QueueControl, tail) == 128);
    assert!(offset_of!(QueueControl, head) == 256);
    assert!(offset_of!(QueueControl, data_wait) == 384);
    assert!(offset_of!(QueueControl, space_wait) == 512);
    assert!(offset_of!(QueueControl, admin) == 640);
    assert!(offset_of!(QueueControl, counters) == 768);
    assert!(offset_of!(QueueControl, participants) == 896);
};

fn zeroed_counters() -> Counters {
    Counters {
        tail_helps: AtomicU64::new(0),
        head_helps: AtomicU64::new(0),
        claims_repaired: AtomicU64::new(0),
        reads_repaired: AtomicU64::new(0),
        tombs_skipped: AtomicU64::new(0),
        late_publishes: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        seal_tombs: AtomicU64::new(0),
        repairs: AtomicU64::new(0),
    }
}

impl QueueControl {
    /// A control block on the heap (models and tests; segments use
    /// `init_in_place`). The slots it goes with must be zeroed.
    pub fn new(params: QueueParams) -> QueueControl {
        QueueControl {
            params,
            tail: Line(AtomicU64::new(0)),
            head: Line(AtomicU64::new(0)),
            data_wait: Line(WaitPoint::new()),
            space_wait: Line(WaitPoint::new()),
            admin: Line(Admin {
                repair_lock: AtomicU64::new(0),
                next_incarnation: AtomicU64::new(0),
            }),
            counters: Line(zeroed_counters()),
            participants: Line(std::array::from_fn(|_| Entry {
                holder: AtomicU64::new(0),
                incarnation: AtomicU64::new(0),
            })),
        }
    }

    /// Initialises a control block in zeroed memory that no other process
    /// uses yet (the slots after it must be zeroed too: all FREE at lap 0).
    ///
    /// # Safety
    /// `ptr` is valid for writes of `CONTROL_SIZE` bytes, 128-aligned,
    /// zeroed, and not accessed by anyone else until this returns.
    #[cfg(not(loom))]
    pub unsafe fn init_in_place(ptr: *mut QueueControl, params: QueueParams) {
        // SAFETY: the caller guarantees exclusive, valid, aligned memory;
        // zero bytes are valid atomics and the right initial values, so
        // only the parameters need writing.
        unsafe { std::ptr::addr_of_mut!((*ptr).params).write(params) };
    }

    /// Copies the parameters out (another process may scribble on them, so
    /// the copy is what gets validated and used).
    pub fn params(&self) -> QueueParams {
        // SAFETY: `params` is a valid, aligned field of `self`; a volatile
        // read copies whatever bytes are there, and every bit pattern is a
        // valid `QueueParams` (it is `Pod`).
        unsafe { std::ptr::read_volatile(&self.params) }
    }
}

/// A snapshot of a queue's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// `tail` advanced by a producer for another that claimed a slot.
    pub tail_helps: u64,
    /// `head` advanced by a consumer for another that took a slot.
    pub head_helps: u64,
    /// Unpublished claims turned into tombstones by repair.
    pub claims_repaired: u64,
    /// Unfinished reads freed by repair (records lost with their reader).
    pub reads_repaired: u64,
    /// Tombstones consumers skipped.
    pub tombs_skipped: u64,
    /// Publishes or releases that failed because repair came first.
    pub late_publishes: u64,
    /// Claims their producer gave up (a dropped loan).
    pub abandoned: u64,
    /// Slots tombstoned by a seal.
    pub seal_tombs: u64,
    /// Incarnations repaired.
    pub repairs: u64,
}

/// A snapshot of a queue's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePositions {
    /// Next position to claim.
    pub tail: u64,
    /// Next position to take.
    pub head: u64,
    /// Whether the queue is sealed.
    pub sealed: bool,
}

impl QueuePositions {
    /// Records claimed and not yet taken (never underflows: a reading of
    /// `head` past `tail` counts as empty).
    pub fn depth(&self) -> u64 {
        self.tail.saturating_sub(self.head)
    }
}

/// A claim in progress, as [`Queue::claims`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimSeen {
    /// The slot.
    pub slot: u64,
    /// The slot's state word: the same claim keeps the same word.
    pub word: u64,
    /// A read (taken, being copied out) rather than a write.
    pub reading: bool,
    /// The process identity holding the claimant's participant entry (0
    /// if the entry was not found).
    pub holder: u64,
}

/// A registered participant: its table entry and incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Participant {
    index: u32,
    incarnation: Incarnation,
}

impl Participant {
    /// The entry index (also its waiter bit).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its incarnation, the owner of its claims.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Its registration bit on the queue's wait points.
    pub fn waiter(&self) -> Waiter {
        Waiter::slot(self.index)
    }
}

/// A slot claimed by CAS whose position `tail` may not have passed yet:
/// the first half of a push ([`Queue::claim_slot`]).
#[derive(Debug)]
#[must_use = "a claimed slot wedges the queue until advanced, published or repaired"]
pub struct SlotClaim {
    claim: Claim,
}

/// A claimed slot to write and publish.
#[derive(Debug)]
#[must_use = "a claim must be published or abandoned"]
pub struct Claim {
    position: u64,
    offset: u64,
    lap: u32,
    owner: u32,
    len: u64,
}

impl Claim {
    /// The record's position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Offset of the payload in the slot region.
    pub fn payload_offset(&self) -> u64 {
        self.offset + SLOT_HEADER
    }

    /// Payload length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A slot taken for reading; release it with [`Queue::release`].
#[derive(Debug)]
#[must_use = "a taken slot must be released"]
pub struct Taken {
    position: u64,
    offset: u64,
    lap: u32,
    owner: u32,
    len: u64,
}

impl Taken {
    /// The record's position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Offset of the payload in the slot region.
    pub fn payload_offset(&self) -> u64 {
        self.offset + SLOT_HEADER
    }

    /// Payload length (at most the stride).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a repair did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Incarnations repaired.
    pub incarnations: u64,
    /// Unpublished claims turned into tombstones.
    pub claims_tombed: u64,
    /// Unfinished reads freed.
    pub reads_freed: u64,
}

impl std::ops::AddAssign for RepairReport {
    fn add_assign(&mut self, other: RepairReport) {
        self.incarnations += other.incarnations;
        self.claims_tombed += other.claims_tombed;
        self.reads_freed += other.reads_freed;
    }
}

/// What a blocked producer or consumer is waiting behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// Nothing: the operation can proceed (or fails for good).
    None,
    /// The slot's state word: an ordinary full or empty queue.
    Idle(u64),
    /// A claim of `owner` in the slot whose state word is `word`: if the
    /// owner is dead, repairing it moves the queue again.
    Claimed {
        /// The claimant.
        owner: Incarnation,
        /// The state word seen.
        word: u64,
    },
}

impl Blocker {
    /// Whether `found` (a `push_blocker` or `pop_blocker` answer) means the
    /// caller must wait. An error does not: the operation reports it.
    pub fn blocks(found: &Result<Blocker, QueueError>) -> bool {
        matches!(found, Ok(Blocker::Idle(_) | Blocker::Claimed { .. }))
    }
}

/// The queue algorithm bound to a control block and its slots.
pub struct Queue<'a, M: RingBytes> {
    ctrl: &'a QueueControl,
    slots: &'a M,
    geo: Geometry,
}

impl<'a, M: RingBytes> Queue<'a, M> {
    /// Validates the control block against the slots and binds them.
    ///
    /// # Errors
    /// The parameters are inconsistent or the slot region is too small.
    pub fn new(ctrl: &'a QueueControl, slots: &'a M) -> Result<Queue<'a, M>, LayoutError> {
        let geo = Geometry::validate(&ctrl.params(), slots.len())?;
        Ok(Queue { ctrl, slots, geo })
    }

    /// Binds parts whose geometry was validated before (hot path).
    ///
    /// # Panics
    /// If `geo` does not fit the slot region.
    pub fn with_geometry(ctrl: &'a QueueControl, slots: &'a M, geo: Geometry) -> Queue<'a, M> {
        assert!(geo.capacity * geo.slot_size <= slots.len());
        Queue { ctrl, slots, geo }
    }

    /// The validated geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// `(state word, length word, slot offset)` of the slot for `position`.
    #[inline]
    fn slot(&self, index: u64) -> (&'a AtomicU64, &'a AtomicU64, u64) {
        let offset = index * self.geo.slot_size;
        // SAFETY: index < capacity, and capacity * slot_size <= slots.len()
        // (validated); slot_size is a multiple of 8, so both words are
        // 8-aligned and in bounds.
        unsafe {
            (
                self.slots.header(offset),
                self.slots.header(offset + 8),
                offset,
            )
        }
    }

    /// Current positions.
    pub fn positions(&self) -> QueuePositions {
        let head = self.ctrl.head.0.load(Ordering::Acquire);
        let tail = self.ctrl.tail.0.load(Ordering::Acquire);
        QueuePositions {
            tail: tail & !CLOSED,
            head,
            sealed: tail & CLOSED != 0,
        }
    }

    /// The slots being written or read right now, with the process that
    /// holds each claimant's participant entry (for a supervisor watching
    /// for stuck claimers). A snapshot: a claim may end while it is taken.
    /// A slot whose state no writer produces is skipped.
    pub fn claims(&self) -> Vec<ClaimSeen> {
        let holders: Vec<(u64, u64)> = self
            .ctrl
            .participants
            .0
            .iter()
            .map(|e| {
                (
                    e.incarnation.load(Ordering::Acquire),
                    e.holder.load(Ordering::Acquire),
                )
            })
            .collect();
        let mut claims = Vec::new();
        for slot in 0..self.geo.capacity {
            let word = self.slot(slot).0.load(Ordering::Acquire);
            let Ok(state) = State::decode(word) else {
                continue;
            };
            if matches!(state.tag, Tag::Writing | Tag::Reading) {
                let owner = u64::from(state.owner);
                claims.push(ClaimSeen {
                    slot,
                    word,
                    reading: state.tag == Tag::Reading,
                    holder: holders
                        .iter()
                        .find(|&&(inc, _)| inc == owner)
                        .map_or(0, |&(_, holder)| holder),
                });
            }
        }
        claims
    }

    /// Participant entries in use.
    pub fn participants(&self) -> usize {
        self.ctrl
            .participants
            .0
            .iter()
            .filter(|e| e.holder.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Whether the queue is sealed.
    pub fn is_sealed(&self) -> bool {
        self.ctrl.tail.0.load(Ordering::Acquire) & CLOSED != 0
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> QueueCounters {
        let c = &self.ctrl.counters.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueCounters {
            tail_helps: get(&c.tail_helps),
            head_helps: get(&c.head_helps),
            claims_repaired: get(&c.claims_repaired),
            reads_repaired: get(&c.reads_repaired),
            tombs_skipped: get(&c.tombs_skipped),
            late_publishes: get(&c.late_publishes),
            abandoned: get(&c.abandoned),
            seal_tombs: get(&c.seal_tombs),
            repairs: get(&c.repairs),
        }
    }

    fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    // ----- producers -----

    /// First half of a push: claims the slot at `tail` by CAS, without
    /// advancing `tail` (see [`Queue::advance_tail`]). A producer stopped
    /// between the two leaves a claimed slot at `tail`, which other
    /// producers help past.
    ///
    /// # Errors
    /// `Full`, `TooLarge`, `Sealed` or `Corrupt`.
    pub fn claim_slot(&self, me: Incarnation, len: u64) -> Result<SlotClaim, QueueError> {
        if len > self.geo.stride {
            return Err(QueueError::TooLarge {
                len,
                max: self.geo.stride,
            });
        }
        // Relaxed: `tail` only says where to look; the slot's state word,
        // loaded with Acquire, decides.
        let mut tail = self.ctrl.tail.0.load(Ordering::Relaxed);
        let mut stale = StaleGuard::default();
        loop {
            if tail & CLOSED != 0 {
                return Err(QueueError::Sealed);
            }
            if tail >= MAX_POSITION {
                return Err(QueueError::Corrupt("tail past the largest position"));
            }
            let (index, lap) = self.geo.split(tail);
            let (state, _, offset) = self.slot(index);
            // Relaxed: the claiming CAS below (Acquire) is what
            // synchronises with the consumer's free.
            let word = state.load(Ordering::Relaxed);
            let s = State::decode(word)?;
            if s.lap == lap && s.tag == Tag::Free {
                let claimed = State::new(lap, Tag::Writing, me.0).word();
                // Acquire pairs with the Release of the consumer's free (in
                // `release` or a tomb skip): its reads of the previous
                // lap's payload happen before our writes.
                if state
                    .compare_exchange(word, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(SlotClaim {
                        claim: Claim {
                            position: tail,
                            offset,
                            lap,
                            owner: me.0,
                            len,
                        },
                    });
                }
            } else if s.lap == lap {
                // Someone claimed `tail` and has not advanced it yet: help.
                if mutant::active(Mutant::QueueSkipTailHelp) {
                    return Err(QueueError::Full);
                }
                if self.cas_tail(tail, tail + 1) {
                    Self::count(&self.ctrl.counters.0.tail_helps, 1);
                }
            } else if s.lap == lap.wrapping_add(1) {
                // `tail`'s position was claimed and is already done with:
                // a dead claimer's slot, tombed by repair and skipped by a
                // consumer before anyone helped `tail` past it. Help.
                if mutant::active(Mutant::QueueSkipLapAheadHelp) {
                    let now = self.ctrl.tail.0.load(Ordering::Relaxed);
                    stale.observe(now == tail)?;
                    tail = now;
                    continue;
                }
                if self.cas_tail(tail, tail + 1) {
                    Self::count(&self.ctrl.counters.0.tail_helps, 1);
                }
            } else if s.lap == lap.wrapping_sub(1) {
                // The slot still holds the previous lap: full, unless
                // `tail` moved on meanwhile.
                let now = self.ctrl.tail.0.load(Ordering::Relaxed);
                if now == tail {
                    return Err(QueueError::Full);
                }
                tail = now;
                continue;
            }
            // Stale `tail` (or a lost CAS): look again.
            let now = self.ctrl.tail.0.load(Ordering::Relaxed);
            stale.observe(now == tail)?;
            tail = now;
        }
    }

    fn cas_tail(&self, from: u64, to: u64) -> bool {
        // Relaxed: `tail` publishes nothing; the slot words carry the data
        // and their own orderings. A CAS expecting a value without CLOSED
        // fails once a seal set it.
        self.ctrl
            .tail
            .0
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Second half of a push's claim: advances `tail` past the slot. If a
    /// seal closed `tail` at exactly this position, the claim lies past the
    /// sealed end: it is tombstoned and `Sealed` returned.
    ///
    /// # Errors
    /// `Sealed`.
    pub fn advance_tail<F: Futex + ?Sized>(
        &self,
        slot: SlotClaim,
        futex: &F,
    ) -> Result<Claim, QueueError> {
        let claim = slot.claim;
        crash::point(CrashPoint::AfterSlotClaim);
        let pos = claim.position;
        if let Err(now) =
            self.ctrl
                .tail
                .0
                .compare_exchange(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
            && now == pos | CLOSED
            && !mutant::active(Mutant::QueueSkipSealBackout)
        {
            // Sealed before our advance: nobody will copy past `pos`.
            // Tomb our claim (unless the sealer already did) and move
            // `tail` past it so consumers skip it.
            let (index, _) = self.geo.split(pos);
            let (state, _, _) = self.slot(index);
            let ours = State::new(claim.lap, Tag::Writing, claim.owner).word();
            let tomb = State::new(claim.lap, Tag::Tomb, 0).word();
            let _ = state.compare_exchange(ours, tomb, Ordering::Release, Ordering::Relaxed);
            let _ = self.ctrl.tail.0.compare_exchange(
                pos | CLOSED,
                (pos + 1) | CLOSED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            // A consumer may sleep at `pos`, having seen our claim.
            self.ctrl.data_wait.0.notify(futex);
            return Err(QueueError::Sealed);
        }
        // Otherwise our CAS won, or another producer helped, or a seal came
        // after someone advanced past us (it then tombs or waits for us).
        crash::point(CrashPoint::AfterTailAdvance);
        Ok(claim)
    }

    /// Claims a slot for a record of `len` bytes: [`Queue::claim_slot`]
    /// then [`Queue::advance_tail`].
    ///
    /// # Errors
    /// `Full`, `TooLarge`, `Sealed` or `Corrupt`.
    #[inline]
    pub fn try_claim<F: Futex + ?Sized>(
        &self,
        me: Incarnation,
        len: u64,
        futex: &F,
    ) -> Result<Claim, QueueError> {
        self.advance_tail(self.claim_slot(me, len)?, futex)
    }

    /// Copies the payload into a claimed slot.
    pub fn fill(&self, claim: &Claim, payload: &[u8]) {
        assert_eq!(payload.len() as u64, claim.len, "payload length changed");
        // SAFETY: claim.len <= stride, so the payload fits its slot; the
        // slot is WRITING under our incarnation, so no consumer reads it
        // and no other producer writes it.
        unsafe { self.slots.write(claim.payload_offset(), payload) };
    }

    /// Publishes a filled claim; returns its position.
    ///
    /// # Errors
    /// `ClaimRepaired` if repair tombstoned the claim first, `Sealed` if a
    /// seal did: the record is not delivered.
    pub fn publish(&self, claim: Claim) -> Result<u64, QueueError> {
        let (index, _) = self.geo.split(claim.position);
        let (state, len_word, _) = self.slot(index);
        len_word.store(claim.len, Ordering::Relaxed);
        let ours = State::new(claim.lap, Tag::Writing, claim.owner).word();
        let ready = State::new(claim.lap, Tag::Ready, 0).word();
        // Release pairs with the consumer's Acquire load of the state word
        // in `try_take`: the payload and length written above are visible
        // to whoever sees READY. SeqCst makes it the publication the wake
        // protocol orders (`wake_after_seqcst_rmw`).
        let success = order(
            Ordering::SeqCst,
            Mutant::QueuePublishRelaxed,
            Ordering::Relaxed,
        );
        // Acquire on failure pairs with the Release of the tomb: a seal's
        // CLOSED bit, set before its tombs, is then visible to `is_sealed`.
        match state.compare_exchange(ours, ready, success, Ordering::Acquire) {
            Ok(_) => Ok(claim.position),
            Err(_) => {
                Self::count(&self.ctrl.counters.0.late_publishes, 1);
                if self.is_sealed() {
                    Err(QueueError::Sealed)
                } else {
                    Err(QueueError::ClaimRepaired)
                }
            }
        }
    }

    /// Gives up a claim: it becomes a tombstone that consumers skip.
    pub fn abandon(&self, claim: Claim) {
        let (index, _) = self.geo.split(claim.position);
        let (state, _, _) = self.slot(index);
        let ours = State::new(claim.lap, Tag::Writing, claim.owner).word();
        let tomb = State::new(claim.lap, Tag::Tomb, 0).word();
        // Release: a consumer that skips the tomb frees the slot for a
        // producer that will write it after any bytes we wrote.
        if state
            .compare_exchange(ours, tomb, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            Self::count(&self.ctrl.counters.0.abandoned, 1);
        }
    }

    /// Claims, fills and publishes one record; returns its position.
    ///
    /// # Errors
    /// As [`Queue::try_claim`] and [`Queue::publish`].
    pub fn try_push<F: Futex + ?Sized>(
        &self,
        me: Incarnation,
        payload: &[u8],
        futex: &F,
    ) -> Result<u64, QueueError> {
        let claim = self.try_claim(me, payload.len() as u64, futex)?;
        self.fill(&claim, payload);
        let position = self.publish(claim)?;
        self.wake_consumers(futex);
        Ok(position)
    }

    /// Wakes consumers after a publish (fence-free when nobody sleeps).
    #[inline]
    pub fn wake_consumers<F: Futex + ?Sized>(&self, futex: &F) {
        self.ctrl.data_wait.0.wake_after_seqcst_rmw(futex);
    }

    /// What a push waits behind at `tail`: `None` if it can go ahead (or
    /// will fail for good).
    ///
    /// # Errors
    /// `Corrupt`.
    pub fn push_blocker(&self) -> Result<Blocker, QueueError> {
        let tail = self.ctrl.tail.0.load(Ordering::Acquire);
        if tail & CLOSED != 0 || tail >= MAX_POSITION {
            return Ok(Blocker::None);
        }
        let (index, lap) = self.geo.split(tail);
        let (state, _, _) = self.slot(index);
        let word = state.load(Ordering::Acquire);
        let s = State::decode(word)?;
        if s.lap != lap.wrapping_sub(1) {
            return Ok(Blocker::None);
        }
        Ok(blocker(s, word))
    }

    /// Sleeps until a push may succeed, or `deadline`. Returns whether it
    /// may.
    pub fn wait_for_space<F: Futex + ?Sized>(
        &self,
        who: Waiter,
        futex: &F,
        spins: u32,
        deadline: Option<Instant>,
    ) -> bool {
        self.ctrl
            .space_wait
            .0
            .wait_until(futex, who, spins, deadline, || {
                !Blocker::blocks(&self.push_blocker())
            })
    }

    // ----- consumers -----

    /// Takes the record at `head` if one is published; skips tombstones
    /// (waking producers, for whom a slot came free). `Ok(None)`: empty
    /// (or the record at `head` is still being written).
    ///
    /// # Errors
    /// `Sealed` once sealed and drained; `Corrupt`.
    pub fn try_take<F: Futex + ?Sized>(
        &self,
        me: Incarnation,
        futex: &F,
    ) -> Result<Option<Taken>, QueueError> {
        // Relaxed: as in `claim_slot`, the state word decides.
        let mut head = self.ctrl.head.0.load(Ordering::Relaxed);
        let mut stale = StaleGuard::default();
        loop {
            if head >= MAX_POSITION {
                return Err(QueueError::Corrupt("head past the largest position"));
            }
            let (index, lap) = self.geo.split(head);
            let (state, len_word, offset) = self.slot(index);
            // Relaxed: the claiming CAS below (Acquire) is what
            // synchronises with the publish; a stale word only fails it.
            let word = state.load(Ordering::Relaxed);
            let s = State::decode(word)?;
            if s.lap == lap {
                match s.tag {
                    Tag::Ready => {
                        let reading = State::new(lap, Tag::Reading, me.0).word();
                        let won = if mutant::active(Mutant::QueueTakePlainStore) {
                            state.store(reading, Ordering::Relaxed);
                            true
                        } else {
                            state
                                .compare_exchange(
                                    word,
                                    reading,
                                    // Acquire pairs with the producer's publishing CAS:
                                    // payload and length are visible once we own the slot.
                                    order(
                                        Ordering::Acquire,
                                        Mutant::QueueTakeRelaxed,
                                        Ordering::Relaxed,
                                    ),
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                        };
                        if won {
                            crash::point(CrashPoint::AfterReadClaim);
                            self.cas_head(head, head + 1);
                            let len = len_word.load(Ordering::Relaxed);
                            let taken = Taken {
                                position: head,
                                offset,
                                lap,
                                owner: me.0,
                                len,
                            };
                            if len > self.geo.stride {
                                let _ = self.release(taken);
                                return Err(QueueError::Corrupt(
                                    "record length exceeds the stride",
                                ));
                            }
                            return Ok(Some(taken));
                        }
                    }
                    Tag::Tomb => {
                        let free = State::new(lap.wrapping_add(1), Tag::Free, 0).word();
                        // Release pairs with the next producer's Acquire of
                        // the state word (as in `release`); SeqCst for
                        // `wake_after_seqcst_rmw`.
                        if state
                            .compare_exchange(word, free, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok()
                        {
                            Self::count(&self.ctrl.counters.0.tombs_skipped, 1);
                            self.cas_head(head, head + 1);
                            self.wake_producers(futex);
                        }
                    }
                    Tag::Free | Tag::Writing => {
                        // Nothing published at `head` yet.
                        let now = self.ctrl.head.0.load(Ordering::Relaxed);
                        if now == head {
                            return self.empty_or_sealed(head);
                        }
                        head = now;
                        continue;
                    }
                    Tag::Reading => {
                        // Taken by another consumer that has not advanced
                        // `head` yet: help.
                        if self.cas_head(head, head + 1) {
                            Self::count(&self.ctrl.counters.0.head_helps, 1);
                        }
                    }
                }
            } else if s.lap == lap.wrapping_add(1) {
                // Already taken and freed (or claimed again): help.
                if self.cas_head(head, head + 1) {
                    Self::count(&self.ctrl.counters.0.head_helps, 1);
                }
            } else if s.lap == lap.wrapping_sub(1) {
                // The previous lap's record is still being read: nothing
                // for `head` yet.
                let now = self.ctrl.head.0.load(Ordering::Relaxed);
                if now == head {
                    return self.empty_or_sealed(head);
                }
                head = now;
                continue;
            }
            let now = self.ctrl.head.0.load(Ordering::Relaxed);
            stale.observe(now == head)?;
            head = now;
        }
    }

    fn cas_head(&self, from: u64, to: u64) -> bool {
        // Relaxed: `head` publishes nothing (see `cas_tail`).
        self.ctrl
            .head
            .0
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn empty_or_sealed(&self, head: u64) -> Result<Option<Taken>, QueueError> {
        let tail = self.ctrl.tail.0.load(Ordering::Acquire);
        if tail & CLOSED != 0 && head >= tail & !CLOSED {
            Err(QueueError::Sealed)
        } else {
            Ok(None)
        }
    }

    /// Copies a taken record's payload into `dst` (`dst.len()` is the
    /// record's length).
    pub fn copy_out(&self, taken: &Taken, dst: &mut [u8]) {
        assert_eq!(dst.len() as u64, taken.len, "buffer length differs");
        let (first, rest) = dst.split_at_mut(dst.len() / 2);
        // SAFETY: len <= stride was checked in `try_take`, so the bytes lie
        // in the slot; the slot is READING under our incarnation, so no
        // producer writes it until we release it.
        unsafe { self.slots.read(taken.payload_offset(), first) };
        crash::point(CrashPoint::MidCopy);
        // SAFETY: as above.
        unsafe {
            self.slots
                .read(taken.payload_offset() + first.len() as u64, rest)
        };
    }

    /// Frees a taken slot for the next lap.
    ///
    /// # Errors
    /// `ReadRepaired` if repair freed it first: the bytes read may be torn.
    pub fn release(&self, taken: Taken) -> Result<(), QueueError> {
        let (index, _) = self.geo.split(taken.position);
        let (state, _, _) = self.slot(index);
        let ours = State::new(taken.lap, Tag::Reading, taken.owner).word();
        let next_lap = if mutant::active(Mutant::QueueFreeSameLap) {
            taken.lap
        } else {
            taken.lap.wrapping_add(1)
        };
        let free = State::new(next_lap, Tag::Free, 0).word();
        // Release pairs with the next producer's Acquire of the state word
        // in `claim_slot`: our reads of the payload happen before its
        // writes. SeqCst for `wake_after_seqcst_rmw`.
        let success = order(
            Ordering::SeqCst,
            Mutant::QueueFreeRelaxed,
            Ordering::Relaxed,
        );
        match state.compare_exchange(ours, free, success, Ordering::Relaxed) {
            Ok(_) => Ok(()),
            Err(_) => {
                Self::count(&self.ctrl.counters.0.late_publishes, 1);
                Err(QueueError::ReadRepaired)
            }
        }
    }

    /// Wakes producers after a release (fence-free when nobody sleeps).
    #[inline]
    pub fn wake_producers<F: Futex + ?Sized>(&self, futex: &F) {
        self.ctrl.space_wait.0.wake_after_seqcst_rmw(futex);
    }

    /// Takes, copies out and releases one record into a new vector.
    ///
    /// # Errors
    /// As [`Queue::try_take`] and [`Queue::release`].
    pub fn try_pop<F: Futex + ?Sized>(
        &self,
        me: Incarnation,
        futex: &F,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(taken) = self.try_take(me, futex)? else {
            return Ok(None);
        };
        let mut out = vec![0; taken.len as usize];
        self.copy_out(&taken, &mut out);
        self.release(taken)?;
        self.wake_producers(futex);
        Ok(Some(out))
    }

    /// What a pop waits behind at `head`: `None` if it can go ahead (or
    /// will fail for good).
    ///
    /// # Errors
    /// `Corrupt`.
    pub fn pop_blocker(&self) -> Result<Blocker, QueueError> {
        let head = self.ctrl.head.0.load(Ordering::Acquire);
        if head >= MAX_POSITION {
            return Ok(Blocker::None);
        }
        let (index, lap) = self.geo.split(head);
        let (state, _, _) = self.slot(index);
        let word = state.load(Ordering::Acquire);
        let s = State::decode(word)?;
        let waiting = (s.lap == lap && matches!(s.tag, Tag::Free | Tag::Writing))
            || s.lap == lap.wrapping_sub(1);
        if !waiting || self.empty_or_sealed(head).is_err() {
            return Ok(Blocker::None);
        }
        Ok(blocker(s, word))
    }

    /// Sleeps until a pop may succeed, or `deadline`. Returns whether it
    /// may.
    pub fn wait_for_data<F: Futex + ?Sized>(
        &self,
        who: Waiter,
        futex: &F,
        spins: u32,
        deadline: Option<Instant>,
    ) -> bool {
        self.ctrl
            .data_wait
            .0
            .wait_until(futex, who, spins, deadline, || {
                !Blocker::blocks(&self.pop_blocker())
            })
    }

    /// The wait point consumers sleep on.
    pub fn data_wait_point(&self) -> &'a WaitPoint {
        &self.ctrl.data_wait.0
    }

    // ----- sealing -----

    /// Seals the queue: pushes fail with `Sealed` from now on (a push that
    /// read `tail` before the seal included), unpublished claims become
    /// tombstones, consumers drain what was published and then get
    /// `Sealed`. Returns the sealed end position. Idempotent.
    ///
    /// # Errors
    /// `Corrupt`.
    pub fn seal<F: Futex + ?Sized>(&self, futex: &F) -> Result<u64, QueueError> {
        // Every claim's `tail` CAS and this RMW are ordered in `tail`'s
        // modification order: a claim whose CAS comes later fails (or backs
        // out, see `advance_tail`); one that came earlier left its slot
        // below the end, where the WRITING scan finds it.
        let prev = self.ctrl.tail.0.fetch_or(CLOSED, Ordering::AcqRel);
        let end = prev & !CLOSED;
        if end >= MAX_POSITION {
            return Err(QueueError::Corrupt("tail past the largest position"));
        }
        // A second seal leaves the end alone (the first one handled it) but
        // scans for claims again, in case the first sealer died mid-way.
        if prev & CLOSED == 0 {
            self.close_end(end)?;
        }
        let (tombed, _) = self
            .rewrite_slots(|s| (s.tag == Tag::Writing).then(|| State::new(s.lap, Tag::Tomb, 0)))?;
        Self::count(&self.ctrl.counters.0.seal_tombs, tombed);
        self.ctrl.data_wait.0.notify(futex);
        self.ctrl.space_wait.0.notify(futex);
        Ok(self.ctrl.tail.0.load(Ordering::Acquire) & !CLOSED)
    }

    /// Handles the slot at the sealed end `e`, which a producer that read
    /// `tail` before the seal may hold or still claim. A consumer may
    /// already have concluded `Sealed` at `e` (its `head` reached the
    /// sealed `tail`), so nothing at `e` may be published from now on: a
    /// FREE or WRITING slot there becomes a TOMB before `tail` moves past
    /// it. (Nothing there is READY: a producer publishes only after its
    /// `tail` CAS, or someone's help, moved `tail` past its slot.)
    fn close_end(&self, end: u64) -> Result<(), QueueError> {
        let (index, lap) = self.geo.split(end);
        let (state, _, _) = self.slot(index);
        loop {
            let word = state.load(Ordering::Acquire);
            let s = State::decode(word)?;
            if s.lap != lap {
                // The previous lap (full queue): a producer that claims
                // this slot later fails its `tail` CAS on `end | CLOSED`
                // and tombs its claim itself.
                return Ok(());
            }
            let skip = s.tag == Tag::Writing && mutant::active(Mutant::QueueSealSkipEndTomb);
            if matches!(s.tag, Tag::Free | Tag::Writing) && !skip {
                let tomb = State::new(lap, Tag::Tomb, 0).word();
                // Release: as in `abandon`.
                if state
                    .compare_exchange(word, tomb, Ordering::Release, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                Self::count(&self.ctrl.counters.0.seal_tombs, 1);
            }
            let _ = self.ctrl.tail.0.compare_exchange(
                end | CLOSED,
                (end + 1) | CLOSED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return Ok(());
        }
    }

    /// Walks every slot once and moves each whose state `next` maps to a
    /// new one there, by CAS (retrying while the slot changes under us);
    /// returns how many WRITING and how many READING slots it moved.
    fn rewrite_slots(
        &self,
        next: impl Fn(State) -> Option<State>,
    ) -> Result<(u64, u64), QueueError> {
        let (mut writing, mut reading) = (0, 0);
        for index in 0..self.geo.capacity {
            let (state, _, _) = self.slot(index);
            let mut word = state.load(Ordering::Acquire);
            loop {
                let s = State::decode(word)?;
                let Some(new) = next(s) else { break };
                let counter = if s.tag == Tag::Reading {
                    &mut reading
                } else {
                    &mut writing
                };
                if new.tag == Tag::Tomb && mutant::active(Mutant::QueueRepairPlainStore) {
                    state.store(new.word(), Ordering::Release);
                    *counter += 1;
                    break;
                }
                // Release: as in `abandon` for a tomb, as in `release` for
                // a freed read (a dead reader's reads are over; a live but
                // misjudged one fails its release).
                match state.compare_exchange(word, new.word(), Ordering::Release, Ordering::Acquire)
                {
                    Ok(_) => {
                        *counter += 1;
                        break;
                    }
                    Err(now) => word = now,
                }
            }
        }
        Ok((writing, reading))
    }

    // ----- participants and repair -----

    /// Registers a participant held by `token` (a non-zero process
    /// identity). Entries held by dead processes are repaired and reused
    /// when the table is full.
    ///
    /// # Errors
    /// `TooManyParticipants`, `RepairBusy` or `Corrupt`.
    pub fn attach<F: Futex + ?Sized>(
        &self,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
        futex: &F,
    ) -> Result<Participant, QueueError> {
        assert_ne!(token, 0, "holder tokens are non-zero");
        let incarnation = self.next_incarnation();
        for attempt in 0..2 {
            for (index, entry) in self.ctrl.participants.0.iter().enumerate() {
                if entry
                    .holder
                    .compare_exchange(0, token, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    entry
                        .incarnation
                        .store(u64::from(incarnation.0), Ordering::Release);
                    return Ok(Participant {
                        index: index as u32,
                        incarnation,
                    });
                }
            }
            if attempt == 0 {
                match self.repair_dead(token, &is_dead, futex) {
                    // Someone else is repairing; their freed entries may
                    // come too late for us, but that is no error of ours.
                    Ok(_) | Err(QueueError::RepairBusy) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(QueueError::TooManyParticipants)
    }

    /// A fresh incarnation, skipping values an entry still holds.
    fn next_incarnation(&self) -> Incarnation {
        loop {
            let n = self
                .ctrl
                .admin
                .0
                .next_incarnation
                .fetch_add(1, Ordering::Relaxed);
            let value = (n % OWNER_MASK) as u32 + 1;
            let held = self
                .ctrl
                .participants
                .0
                .iter()
                .any(|e| e.incarnation.load(Ordering::Acquire) == u64::from(value));
            if !held {
                return Incarnation(value);
            }
        }
    }

    /// Unregisters a participant that holds no claim (a clean exit). An
    /// entry that repair already freed (the participant was judged dead)
    /// is left to its new holder.
    pub fn detach(&self, me: &Participant, token: u64) {
        let entry = &self.ctrl.participants.0[me.index as usize];
        if entry
            .incarnation
            .compare_exchange(
                u64::from(me.incarnation.0),
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.ctrl.data_wait.0.clear(me.waiter());
            self.ctrl.space_wait.0.clear(me.waiter());
            let _ = entry
                .holder
                .compare_exchange(token, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Repairs every participant whose holder `is_dead`, under the repair
    /// lock.
    ///
    /// # Errors
    /// `RepairBusy` if a live process holds the lock; `Corrupt`.
    pub fn repair_dead<F: Futex + ?Sized>(
        &self,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
        futex: &F,
    ) -> Result<RepairReport, QueueError> {
        let _lock = self.lock_repair(token, &is_dead)?;
        let mut report = RepairReport::default();
        for index in 0..MAX_PARTICIPANTS {
            let entry = &self.ctrl.participants.0[index];
            let holder = entry.holder.load(Ordering::Acquire);
            let dead = is_dead(holder) || mutant::active(Mutant::QueueRepairTheLiving);
            if holder == 0 || holder == token || !dead {
                continue;
            }
            // The incarnation is the dead holder's if the holder is still
            // there after reading it (attach sets the holder first).
            let inc = entry.incarnation.load(Ordering::Acquire);
            if entry.holder.load(Ordering::Acquire) == holder {
                report += self.repair_entry(index, holder, inc, futex)?;
            }
        }
        Ok(report)
    }

    /// Repairs incarnation `dead` (its process killed), under the repair
    /// lock: its unpublished claims become tombstones, its unfinished reads
    /// are freed, its entry and waiter registrations are cleared, sleepers
    /// are woken. Idempotent.
    ///
    /// # Errors
    /// `Alive` if the participant's holder is not dead (repairing it would
    /// free slots it may still be writing or reading); `RepairBusy` if a
    /// live process holds the lock; `Corrupt`.
    pub fn repair<F: Futex + ?Sized>(
        &self,
        token: u64,
        dead: Incarnation,
        is_dead: impl Fn(u64) -> bool,
        futex: &F,
    ) -> Result<RepairReport, QueueError> {
        let _lock = self.lock_repair(token, &is_dead)?;
        let entry = self
            .ctrl
            .participants
            .0
            .iter()
            .position(|e| e.incarnation.load(Ordering::Acquire) == u64::from(dead.0));
        match entry {
            Some(index) => {
                let holder = self.ctrl.participants.0[index]
                    .holder
                    .load(Ordering::Acquire);
                if holder != 0 && !is_dead(holder) {
                    return Err(QueueError::Alive);
                }
                self.repair_entry(index, holder, u64::from(dead.0), futex)
            }
            None => self.repair_incarnation(dead.0, futex),
        }
    }

    /// Repairs the owner of a claim a blocked call waits behind, if that
    /// owner's process is dead (or its entry is gone). Returns whether it
    /// repaired.
    ///
    /// # Errors
    /// `RepairBusy` or `Corrupt`.
    pub fn repair_if_dead<F: Futex + ?Sized>(
        &self,
        token: u64,
        owner: Incarnation,
        is_dead: impl Fn(u64) -> bool,
        futex: &F,
    ) -> Result<bool, QueueError> {
        let holder = self.ctrl.participants.0.iter().find_map(|e| {
            (e.incarnation.load(Ordering::Acquire) == u64::from(owner.0))
                .then(|| e.holder.load(Ordering::Acquire))
        });
        if holder.is_some_and(|h| h == 0 || !is_dead(h)) {
            return Ok(false);
        }
        match self.repair(token, owner, is_dead, futex) {
            Ok(_) => Ok(true),
            // The incarnation's entry changed hands meanwhile.
            Err(QueueError::Alive) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Repairs incarnation `inc`, which entry `index` held for `holder`,
    /// and frees the entry if it still holds them (it may have been freed
    /// and taken again meanwhile: then only `inc`'s claims are repaired).
    fn repair_entry<F: Futex + ?Sized>(
        &self,
        index: usize,
        holder: u64,
        inc: u64,
        futex: &F,
    ) -> Result<RepairReport, QueueError> {
        let entry = &self.ctrl.participants.0[index];
        let mut report = RepairReport::default();
        if inc != 0 && inc <= OWNER_MASK {
            report = self.repair_incarnation(inc as u32, futex)?;
        }
        // The incarnation is released only after its claims are repaired,
        // so it cannot be handed out while one may remain.
        if entry
            .incarnation
            .compare_exchange(inc, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let waiter = Waiter::slot(index as u32);
            self.ctrl.data_wait.0.clear(waiter);
            self.ctrl.space_wait.0.clear(waiter);
            let _ = entry
                .holder
                .compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        Ok(report)
    }

    fn repair_incarnation<F: Futex + ?Sized>(
        &self,
        owner: u32,
        futex: &F,
    ) -> Result<RepairReport, QueueError> {
        // One pass: unpublished claims become tombstones, unfinished reads
        // are freed for the next lap.
        let (claims_tombed, reads_freed) = self.rewrite_slots(|s| match s.tag {
            Tag::Writing if s.owner == owner => Some(State::new(s.lap, Tag::Tomb, 0)),
            Tag::Reading if s.owner == owner => {
                Some(State::new(s.lap.wrapping_add(1), Tag::Free, 0))
            }
            _ => None,
        })?;
        let c = &self.ctrl.counters.0;
        Self::count(&c.claims_repaired, claims_tombed);
        Self::count(&c.reads_repaired, reads_freed);
        Self::count(&c.repairs, 1);
        self.ctrl.data_wait.0.notify(futex);
        self.ctrl.space_wait.0.notify(futex);
        Ok(RepairReport {
            incarnations: 1,
            claims_tombed,
            reads_freed,
        })
    }

    fn lock_repair(
        &self,
        token: u64,
        is_dead: &impl Fn(u64) -> bool,
    ) -> Result<RepairLock<'a>, QueueError> {
        let lock = &self.ctrl.admin.0.repair_lock;
        let mut current = lock.load(Ordering::Acquire);
        loop {
            // Held by this very process (another thread) counts as busy:
            // two repairers must not walk the participant table at once.
            if current != 0 && (current == token || !is_dead(current)) {
                return Err(QueueError::RepairBusy);
            }
            // AcqRel: the Acquire half sees what the previous holder
            // repaired; the Release of the unlock pairs with it.
            match lock.compare_exchange(current, token, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(RepairLock { lock, token }),
                Err(now) => current = now,
            }
        }
    }
}

/// Counts how often a position looked stale without changing: a slot
/// whose lap fits neither the position nor its neighbours, while the
/// position stays put, is a scribbled segment, not a race.
#[derive(Default)]
struct StaleGuard(u32);

impl StaleGuard {
    /// Consecutive unchanged sightings tolerated (a racing update becomes
    /// visible long before; loom models, which yield on every spin, see
    /// their updates within a few).
    #[cfg(not(loom))]
    const LIMIT: u32 = 1 << 16;
    #[cfg(loom)]
    const LIMIT: u32 = 4;

    fn observe(&mut self, unchanged: bool) -> Result<(), QueueError> {
        if !unchanged {
            self.0 = 0;
            return Ok(());
        }
        self.0 += 1;
        if self.0 >= Self::LIMIT {
            return Err(QueueError::Corrupt(
                "slot lap inconsistent with its position",
            ));
        }
        crate::sync::spin_loop();
        Ok(())
    }
}

/// Held while repairing; unlocks on drop.
struct RepairLock<'a> {
    lock: &'a AtomicU64,
    token: u64,
}

impl Drop for RepairLock<'_> {
    fn drop(&mut self) {
        let _ = self
            .lock
            .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
    }
}

fn blocker(s: State, word: u64) -> Blocker {
    match s.tag {
        Tag::Writing | Tag::Reading => match Incarnation::new(s.owner) {
            Ok(owner) => Blocker::Claimed { owner, word },
            Err(_) => Blocker::Idle(word),
        },
        _ => Blocker::Idle(word),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::{HeapQueue, HeapRing};
    use proptest::prelude::*;

    struct NoFutex;
    impl Futex for NoFutex {
        fn wait(&self, _: &crate::sync::AtomicU32, _: u32, _: Option<Instant>) {}
        fn wait_any(&self, _: &[(&crate::sync::AtomicU32, u32)], _: Option<Instant>) {}
        fn wake_all(&self, _: &crate::sync::AtomicU32) {}
    }

    const ALIVE: fn(u64) -> bool = |_| false;

    fn inc(n: u32) -> Incarnation {
        Incarnation::new(n).unwrap()
    }

    fn pop(q: &Queue<'_, HeapRing>, me: Incarnation) -> Result<Option<Vec<u8>>, QueueError> {
        q.try_pop(me, &NoFutex)
    }

    #[test]
    fn records_round_trip_across_laps_for_any_capacity() {
        for capacity in [1, 3, 4] {
            let h = HeapQueue::new(capacity, 12);
            let q = h.queue();
            let me = inc(1);
            for round in 0..10u8 {
                let records: Vec<Vec<u8>> = (0..capacity as u8)
                    .map(|i| vec![round ^ i; usize::from(i % 13)])
                    .collect();
                for r in &records {
                    q.try_push(me, r, &NoFutex).unwrap();
                }
                assert_eq!(q.try_push(me, b"x", &NoFutex), Err(QueueError::Full));
                for r in &records {
                    assert_eq!(pop(&q, me).unwrap().as_deref(), Some(&r[..]));
                }
                assert_eq!(pop(&q, me), Ok(None));
                assert_eq!(q.positions().depth(), 0);
            }
        }
    }

    #[test]
    fn oversized_records_are_refused_with_the_stride() {
        let h = HeapQueue::new(2, 8);
        let q = h.queue();
        assert_eq!(
            q.try_push(inc(1), &[0; 9], &NoFutex),
            Err(QueueError::TooLarge { len: 9, max: 8 })
        );
        q.try_push(inc(1), &[7; 8], &NoFutex).unwrap();
        assert_eq!(pop(&q, inc(1)).unwrap(), Some(vec![7; 8]));
    }

    #[test]
    fn a_producer_stopped_after_its_slot_claim_is_helped_past() {
        let h = HeapQueue::new(4, 8);
        let q = h.queue();
        let stopped = q.claim_slot(inc(1), 1).unwrap();
        assert_eq!(q.try_push(inc(2), b"b", &NoFutex), Ok(1));
        assert_eq!(q.counters().tail_helps, 1);
        // The record behind the stopped claim waits for it, in order.
        assert_eq!(pop(&q, inc(3)), Ok(None));
        let claim = q.advance_tail(stopped, &NoFutex).unwrap();
        q.fill(&claim, b"a");
        assert_eq!(q.publish(claim), Ok(0));
        assert_eq!(pop(&q, inc(3)).unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(pop(&q, inc(3)).unwrap().as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn repair_tombs_a_dead_claim_and_its_late_publish_fails() {
        let h = HeapQueue::new(4, 8);
        let q = h.queue();
        let p = q.attach(11, ALIVE, &NoFutex).unwrap();
        let c = q.attach(12, ALIVE, &NoFutex).unwrap();
        let claim = q.try_claim(p.incarnation(), 1, &NoFutex).unwrap();
        q.try_push(c.incarnation(), b"after", &NoFutex).unwrap();
        assert_eq!(
            q.repair(99, p.incarnation(), ALIVE, &NoFutex),
            Err(QueueError::Alive),
            "a live participant is not repaired"
        );
        let dead = |t: u64| t == 11;
        let report = q.repair(99, p.incarnation(), dead, &NoFutex).unwrap();
        assert_eq!(report.claims_tombed, 1);
        assert_eq!(report.reads_freed, 0);
        q.fill(&claim, b"z");
        assert_eq!(q.publish(claim), Err(QueueError::ClaimRepaired));
        assert_eq!(
            pop(&q, c.incarnation()).unwrap().as_deref(),
            Some(&b"after"[..])
        );
        let counters = q.counters();
        assert_eq!(counters.tombs_skipped, 1);
        assert_eq!(counters.claims_repaired, 1);
        assert_eq!(counters.late_publishes, 1);
        // Idempotent: a second repair finds nothing.
        let again = q.repair(99, p.incarnation(), dead, &NoFutex).unwrap();
        assert_eq!((again.claims_tombed, again.reads_freed), (0, 0));
    }

    #[test]
    fn repair_frees_a_dead_read_and_its_late_release_fails() {
        let h = HeapQueue::new(2, 8);
        let q = h.queue();
        q.try_push(inc(1), b"a", &NoFutex).unwrap();
        q.try_push(inc(1), b"b", &NoFutex).unwrap();
        let taken = q.try_take(inc(2), &NoFutex).unwrap().unwrap();
        assert_eq!(q.try_push(inc(1), b"c", &NoFutex), Err(QueueError::Full));
        let report = q.repair(99, inc(2), ALIVE, &NoFutex).unwrap();
        assert_eq!(report.reads_freed, 1);
        assert_eq!(q.release(taken), Err(QueueError::ReadRepaired));
        q.try_push(inc(1), b"c", &NoFutex).unwrap();
        assert_eq!(pop(&q, inc(3)).unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(pop(&q, inc(3)).unwrap().as_deref(), Some(&b"c"[..]));
        assert_eq!(q.positions().depth(), 0);
    }

    #[test]
    fn seal_fails_pushes_and_pending_claims_then_drains() {
        let h = HeapQueue::new(4, 8);
        let q = h.queue();
        q.try_push(inc(1), b"a", &NoFutex).unwrap();
        let pending = q.try_claim(inc(2), 1, &NoFutex).unwrap();
        q.try_push(inc(1), b"b", &NoFutex).unwrap();
        let end = q.seal(&NoFutex).unwrap();
        assert_eq!(end, 4, "the free slot at the old tail is tombed and passed");
        assert_eq!(q.try_push(inc(1), b"c", &NoFutex), Err(QueueError::Sealed));
        q.fill(&pending, b"p");
        assert_eq!(q.publish(pending), Err(QueueError::Sealed));
        assert_eq!(pop(&q, inc(3)).unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(pop(&q, inc(3)).unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(pop(&q, inc(3)), Err(QueueError::Sealed));
        assert_eq!(q.seal(&NoFutex), Ok(4), "sealing again changes nothing");
    }

    #[test]
    fn a_claim_that_meets_the_seal_at_its_own_position_is_tombed() {
        let h = HeapQueue::new(2, 8);
        let q = h.queue();
        let claim = q.claim_slot(inc(1), 1).unwrap();
        // A seal between the slot CAS and the tail CAS: tail is 0 | CLOSED.
        h.ctrl.tail.0.fetch_or(CLOSED, Ordering::AcqRel);
        assert_eq!(
            q.advance_tail(claim, &NoFutex).err(),
            Some(QueueError::Sealed)
        );
        assert_eq!(pop(&q, inc(2)), Err(QueueError::Sealed));
        assert_eq!(q.positions().tail, 1);
    }

    #[test]
    fn participants_get_distinct_incarnations_and_dead_ones_are_reclaimed() {
        let h = HeapQueue::new(2, 8);
        let q = h.queue();
        let mut seen = std::collections::HashSet::new();
        let all: Vec<_> = (0..MAX_PARTICIPANTS as u64)
            .map(|t| q.attach(t + 1, ALIVE, &NoFutex).unwrap())
            .collect();
        for p in &all {
            assert!(seen.insert(p.incarnation()));
        }
        assert_eq!(
            q.attach(1000, ALIVE, &NoFutex),
            Err(QueueError::TooManyParticipants)
        );
        // Token 5 dies holding a claim: the next attach repairs it.
        let dead = all[4];
        let claim = q.try_claim(dead.incarnation(), 1, &NoFutex).unwrap();
        let is_dead = |t: u64| t == 5;
        let fresh = q.attach(1000, is_dead, &NoFutex).unwrap();
        assert_eq!(fresh.index(), dead.index());
        assert!(!seen.contains(&fresh.incarnation()));
        assert_eq!(q.publish(claim), Err(QueueError::ClaimRepaired));
        // A clean detach frees the entry; detaching twice is harmless.
        q.detach(&all[0], 1);
        q.detach(&all[0], 1);
        assert_eq!(q.attach(2000, ALIVE, &NoFutex).unwrap().index(), 0);
    }

    #[test]
    fn a_blocked_call_names_the_claim_it_waits_behind() {
        let h = HeapQueue::new(1, 8);
        let q = h.queue();
        assert!(matches!(q.pop_blocker(), Ok(Blocker::Idle(_))));
        let claim = q.try_claim(inc(7), 1, &NoFutex).unwrap();
        assert!(matches!(
            q.pop_blocker(),
            Ok(Blocker::Claimed { owner, .. }) if owner == inc(7)
        ));
        assert!(matches!(
            q.push_blocker(),
            Ok(Blocker::Claimed { owner, .. }) if owner == inc(7)
        ));
        // No entry holds incarnation 7: it counts as dead.
        assert_eq!(q.repair_if_dead(1, inc(7), ALIVE, &NoFutex), Ok(true));
        assert_eq!(q.pop_blocker(), Ok(Blocker::None));
        assert_eq!(q.publish(claim), Err(QueueError::ClaimRepaired));
    }

    #[test]
    fn the_repair_lock_is_taken_over_from_a_dead_holder_only() {
        let h = HeapQueue::new(1, 8);
        let q = h.queue();
        h.ctrl.admin.0.repair_lock.store(42, Ordering::Relaxed);
        assert_eq!(
            q.repair(1, inc(3), ALIVE, &NoFutex),
            Err(QueueError::RepairBusy)
        );
        assert_eq!(
            q.repair(42, inc(3), ALIVE, &NoFutex),
            Err(QueueError::RepairBusy),
            "another thread of the holder's own process waits too"
        );
        assert!(q.repair(1, inc(3), |t| t == 42, &NoFutex).is_ok());
        assert_eq!(h.ctrl.admin.0.repair_lock.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn threads_deliver_every_record_exactly_once() {
        const PER_PRODUCER: u32 = 20_000;
        let h = HeapQueue::new(8, 4);
        let seen: Vec<std::sync::atomic::AtomicU8> = (0..4 * PER_PRODUCER)
            .map(|_| std::sync::atomic::AtomicU8::new(0))
            .collect();
        let taken = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for p in 0..4u32 {
                let h = &h;
                s.spawn(move || {
                    let q = h.queue();
                    for i in 0..PER_PRODUCER {
                        let value = p * PER_PRODUCER + i;
                        while q
                            .try_push(inc(p + 1), &value.to_le_bytes(), &NoFutex)
                            .is_err()
                        {
                            std::thread::yield_now();
                        }
                    }
                });
            }
            for c in 0..2u32 {
                let (h, seen, taken) = (&h, &seen, &taken);
                s.spawn(move || {
                    let q = h.queue();
                    while taken.load(std::sync::atomic::Ordering::Relaxed) < 4 * PER_PRODUCER {
                        match q.try_pop(inc(10 + c), &NoFutex).unwrap() {
                            Some(bytes) => {
                                let v = u32::from_le_bytes(bytes.try_into().unwrap());
                                seen[v as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                });
            }
        });
        assert!(
            seen.iter()
                .all(|s| s.load(std::sync::atomic::Ordering::Relaxed) == 1)
        );
    }

    proptest! {
        #[test]
        fn interleavings_behave_like_a_bounded_fifo(
            capacity in 1u64..6,
            ops in proptest::collection::vec((0u8..4, 0usize..10), 1..200),
        ) {
            let h = HeapQueue::new(capacity, 9);
            let q = h.queue();
            // The model: (position, record) with `None` for a claim not
            // yet published, `Some(None)` for a tombstone.
            let mut model: std::collections::VecDeque<(u64, Option<Option<Vec<u8>>>)> =
                std::collections::VecDeque::new();
            let mut claims = Vec::new();
            for (op, n) in ops {
                match op {
                    0 => {
                        let record = vec![n as u8; n];
                        match q.try_push(inc(1), &record, &NoFutex) {
                            Ok(at) => model.push_back((at, Some(Some(record)))),
                            Err(QueueError::Full) => {
                                prop_assert_eq!(model.len() as u64, capacity)
                            }
                            Err(e) => prop_assert!(false, "push: {e}"),
                        }
                    }
                    1 => {
                        while matches!(model.front(), Some((_, Some(None)))) {
                            model.pop_front();
                        }
                        let expected = match model.front() {
                            Some((_, Some(Some(_)))) => model.pop_front().and_then(|e| e.1.flatten()),
                            _ => None,
                        };
                        prop_assert_eq!(pop(&q, inc(2)).unwrap(), expected);
                    }
                    2 if claims.len() < 2 => {
                        if let Ok(claim) = q.try_claim(inc(3), n as u64, &NoFutex) {
                            model.push_back((claim.position(), None));
                            claims.push(claim);
                        }
                    }
                    _ => {
                        if let Some(claim) = claims.pop() {
                            let at = claim.position();
                            q.abandon(claim);
                            for entry in model.iter_mut().filter(|e| e.0 == at) {
                                entry.1 = Some(None);
                            }
                        }
                    }
                }
                prop_assert!(q.positions().depth() <= capacity);
            }
        }

        #[test]
        fn scribbled_slots_give_errors_not_panics(
            words in proptest::collection::vec(any::<u64>(), 12),
            head in prop_oneof![0u64..100, any::<u64>()],
        ) {
            let h = HeapQueue::new(3, 24);
            let q = h.queue();
            for (i, w) in words.iter().enumerate() {
                // SAFETY: 12 words of the 3 x 40-byte slot region.
                unsafe { h.slots.header(i as u64 * 8) }.store(*w, Ordering::Relaxed);
            }
            h.ctrl.head.0.store(head, Ordering::Relaxed);
            h.ctrl.tail.0.store(head.wrapping_add(1), Ordering::Relaxed);
            if let Ok(Some(taken)) = q.try_take(inc(1), &NoFutex) {
                prop_assert!(taken.len() <= 24);
                let mut buf = vec![0; taken.len() as usize];
                q.copy_out(&taken, &mut buf);
                let _ = q.release(taken);
            }
            let _ = q.pop_blocker();
            let _ = q.push_blocker();
            let _ = q.try_push(inc(2), b"x", &NoFutex);
            let _ = q.seal(&NoFutex);
            let _ = q.repair(5, inc(1), ALIVE, &NoFutex);
        }
    }
}

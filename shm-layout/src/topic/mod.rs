//! Topics: partitions that are multi-producer ring logs, read by any number
//! of consumer groups at offsets of their own.
//!
//! A topic's memory holds a [`TopicControl`] (parameters, a participant
//! table for producers' incarnations, a table of consumer groups), then one
//! [`PartitionControl`] per partition, then each partition's slots.
//!
//! **Append.** Each slot has one state word `stamp << 32 | tag << 24 |
//! owner`, where `stamp` is the lap of the record it holds plus one
//! (truncated to 32 bits; zero means never written). A record's absolute
//! offset is `lap * capacity + index`. A producer at `tail == pos` takes the
//! slot exclusively by CAS from the previous lap's stamp (READY, TOMB, or
//! never written) to WRITING with its own stamp and owner, then CASes
//! `tail` forward (or finds it helped); a slot already stamped for `pos`
//! means someone took `pos`, so the producer helps `tail` on. A slot still
//! WRITING for the previous lap belongs to a producer a whole lap behind:
//! the newcomer waits (or repairs it, if its owner is dead), so two writers
//! never write one slot at once. The producer then writes the length and
//! payload with atomic word stores after a `fence(Release)`, and publishes
//! by CAS WRITING -> READY (Release). If repair came first (the slot is a
//! TOMB), the publish fails: an error, never a silent loss.
//!
//! **Read.** Readers claim nothing: they keep their own u64 offsets, load
//! the state word (Acquire), copy the length and payload with atomic word
//! loads, `fence(Acquire)`, and load the state word again. A changed word
//! means a producer of a later lap took the slot meanwhile: the copy is
//! discarded and the reader is told it [`Read::Lagged`], with the offset to
//! resume from. A torn record is never returned (the seqlock pattern).
//!
//! **Overflow.** Under [`Overflow::Overwrite`] producers take slots of the
//! previous lap whether or not anyone read them (the evictions are
//! counted, and readers that fall behind learn how much they lost). Under
//! [`Overflow::Backpressure`] a producer takes offset `pos` only if `pos <
//! cursor + capacity` for every *holding* consumer group, where `cursor` is
//! the group's committed offset in that partition; a group whose members
//! are all dead and that has been idle past the topic's retention stops
//! holding ([`TopicControl::release_idle_groups`]).
//!
//! **Repair.** A producer killed between its claim and its publish leaves a
//! WRITING slot with its incarnation as owner; repairing the incarnation
//! turns it into a TOMB, which readers skip and the next lap may take.
//! Producers register in the participant table (holder token, incarnation;
//! the entry's index is its waiter bit), as queue participants do.

use std::time::Instant;

mod group;
pub use group::{
    CoordStats, GROUP_COORD_SIZE, MEMBER_NAME_MAX, MemberId, MemberInfo, Owned, Rebalance,
};
use group::{GroupCoord, OwnerLine};

use bytemuck::{Pod, Zeroable};

use crate::crash::{self, CrashPoint};
use crate::edge::RingBytes;
use crate::map::hash_key;
use crate::mutant::{self, Mutant, order};
use crate::queue::{Blocker, Incarnation, OWNER_BITS, pack_state, unpack_state};
use crate::sync::{AtomicU64, Ordering, fence};
use crate::wait::{Futex, WaitPoint, Waiter};

/// `params.magic` of a topic: "GRAFTOP2" (version 2: with consumer
/// group coordination).
pub const TOPIC_MAGIC: u64 = u64::from_le_bytes(*b"GRAFTOP2");
/// Bytes before a slot's payload: the state word and the length word.
pub const SLOT_HEADER: u64 = 16;
/// Largest number of partitions.
pub const MAX_PARTITIONS: u64 = 1024;
/// Largest capacity of a partition, in records.
pub const MAX_CAPACITY: u64 = 1 << 31;
/// Largest stride (payload bytes per record): 16 MiB.
pub const MAX_STRIDE: u64 = 1 << 24;
/// Offsets stay below this.
pub const MAX_OFFSET: u64 = 1 << 62;
/// Longest consumer group name, in bytes.
pub const GROUP_NAME_MAX: usize = 48;
/// Members recorded per consumer group.
pub const GROUP_MEMBERS: usize = 8;

/// Entries in the participant table (one waiter bit each).
#[cfg(not(loom))]
pub const MAX_PARTICIPANTS: usize = 64;
/// Entries in the participant table (fewer under loom).
#[cfg(loom)]
pub const MAX_PARTICIPANTS: usize = 4;
/// Consumer groups per topic.
#[cfg(not(loom))]
pub const MAX_GROUPS: usize = 16;
/// Consumer groups per topic (fewer under loom).
#[cfg(loom)]
pub const MAX_GROUPS: usize = 2;

/// Size of [`TopicControl`] in a segment.
pub const CONTROL_SIZE: u64 = 3328 + GROUP_COORD_SIZE * MAX_GROUPS as u64;
/// Size of each [`PartitionControl`].
pub const PARTITION_CONTROL_SIZE: u64 = 768;

const OWNER_MASK: u64 = (1 << OWNER_BITS) - 1;
/// A group entry's state while its name is being written.
const GROUP_CLAIMED: u64 = 1;
/// Set in a group entry's state once it is in use.
const GROUP_READY: u64 = 1 << 63;

/// What producers do when a partition is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Take the oldest record's slot; readers that had not read it learn
    /// how many records they lost.
    Overwrite,
    /// Wait until every holding consumer group has committed past the
    /// oldest record.
    Backpressure,
}

impl Overflow {
    fn raw(self) -> u64 {
        match self {
            Overflow::Overwrite => 0,
            Overflow::Backpressure => 1,
        }
    }

    fn from_raw(raw: u64) -> Option<Overflow> {
        match raw {
            0 => Some(Overflow::Overwrite),
            1 => Some(Overflow::Backpressure),
            _ => None,
        }
    }
}

/// A slot's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    /// Never written (only with stamp 0).
    Empty = 0,
    Writing = 1,
    Ready = 2,
    Tomb = 3,
}

/// A decoded state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    stamp: u32,
    tag: Tag,
    owner: u32,
}

impl State {
    fn new(stamp: u32, tag: Tag, owner: u32) -> State {
        State { stamp, tag, owner }
    }

    fn word(self) -> u64 {
        pack_state(self.stamp, self.tag as u8, self.owner)
    }

    fn decode(word: u64) -> Result<State, TopicError> {
        let (stamp, tag, owner) = unpack_state(word);
        let tag = match tag {
            0 => Tag::Empty,
            1 => Tag::Writing,
            2 => Tag::Ready,
            3 => Tag::Tomb,
            _ => return Err(TopicError::Corrupt("unknown slot tag")),
        };
        Ok(State { stamp, tag, owner })
    }
}

/// Why a topic operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// The record is larger than the topic's stride.
    TooLarge {
        /// Payload length asked for.
        len: u64,
        /// The stride.
        max: u64,
    },
    /// Backpressure: a holding group has not committed past the oldest
    /// record yet.
    Full,
    /// The slot at `tail` is still being written by a producer a lap
    /// behind (repair it if its owner is dead, else wait).
    Busy(Blocker),
    /// This claim was repaired (its producer was judged dead) before it
    /// was published: the record was not appended.
    ClaimRepaired,
    /// Every participant entry is held by a live process.
    TooManyParticipants,
    /// Every consumer group entry is in use.
    TooManyGroups,
    /// Every member entry of the consumer group is held by a live member.
    TooManyMembers,
    /// A member name is empty or longer than [`MEMBER_NAME_MAX`].
    BadMemberName,
    /// Another live process is a member of the group under that name.
    MemberTaken,
    /// The member is no longer in the group (evicted as dead or silent,
    /// or it left): it must claim again.
    NotMember,
    /// A rebalance of the group stayed in progress while the assignment
    /// was read (its maker may have died; the next rebalance repairs it).
    Rebalancing,
    /// The partition moved to another member since this one was handed
    /// it: the commit was refused.
    Fenced {
        /// The partition.
        partition: u64,
    },
    /// A group name is empty or longer than [`GROUP_NAME_MAX`].
    BadGroupName,
    /// A live process holds the topic's admin lock; try again later.
    AdminBusy,
    /// A blocking call ran past its deadline.
    TimedOut,
    /// The shared bytes are inconsistent (scribbled on).
    Corrupt(&'static str),
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicError::TooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds the stride of {max} bytes")
            }
            TopicError::Full => write!(
                f,
                "partition is full: a consumer group has not committed past its oldest record"
            ),
            TopicError::Busy(_) => write!(f, "a producer a lap behind still writes the slot"),
            TopicError::ClaimRepaired => write!(
                f,
                "the claim was repaired as if its producer had died; the record was not appended"
            ),
            TopicError::TooManyParticipants => write!(
                f,
                "all {MAX_PARTICIPANTS} participant entries are held by live processes"
            ),
            TopicError::TooManyGroups => {
                write!(f, "all {MAX_GROUPS} consumer group entries are in use")
            }
            TopicError::TooManyMembers => write!(
                f,
                "all {GROUP_MEMBERS} member entries of the group are held by live members"
            ),
            TopicError::BadMemberName => {
                write!(f, "a member name has 1 to {MEMBER_NAME_MAX} bytes")
            }
            TopicError::MemberTaken => write!(
                f,
                "another live process is a member of the group under that name"
            ),
            TopicError::NotMember => write!(
                f,
                "no longer a member of the group (evicted or left); claim again"
            ),
            TopicError::Rebalancing => {
                write!(f, "the group's rebalance stayed in progress; try again")
            }
            TopicError::Fenced { partition } => write!(
                f,
                "partition {partition} moved to another member; the commit was refused"
            ),
            TopicError::BadGroupName => {
                write!(f, "a group name has 1 to {GROUP_NAME_MAX} bytes")
            }
            TopicError::AdminBusy => write!(f, "another live process holds the topic's admin lock"),
            TopicError::TimedOut => write!(f, "timed out"),
            TopicError::Corrupt(what) => write!(f, "topic corrupt: {what}"),
        }
    }
}

impl std::error::Error for TopicError {}

/// Immutable parameters, written once by the creator (the magic last).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TopicParams {
    /// [`TOPIC_MAGIC`].
    pub magic: u64,
    /// Number of partitions, `1..=MAX_PARTITIONS`.
    pub partitions: u64,
    /// Records per partition, `1..=MAX_CAPACITY`.
    pub capacity: u64,
    /// Largest payload per record, `1..=MAX_STRIDE`.
    pub stride: u64,
    /// Bytes per slot: `SLOT_HEADER + stride` rounded up to 8.
    pub slot_size: u64,
    /// [`Overflow`]: 0 overwrite, 1 backpressure.
    pub overflow: u64,
    /// How long a group with no live member keeps holding producers back.
    pub group_retention_ms: u64,
    /// The lease the topic was made in (a copy of a topic's bytes in
    /// another lease, a stored object say, is not taken for a topic).
    pub lease_id: u64,
    /// The TTL (seconds) the topic's lease is renewed for.
    pub lease_secs: u64,
    /// Reserved, zero.
    pub reserved: [u64; 7],
}

impl TopicParams {
    /// Parameters for `partitions` partitions of `capacity` records of up
    /// to `stride` bytes.
    ///
    /// # Errors
    /// A count out of range.
    pub fn new(
        partitions: u64,
        capacity: u64,
        stride: u64,
        overflow: Overflow,
        group_retention_ms: u64,
    ) -> Result<TopicParams, TopicError> {
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(TopicError::Corrupt("a topic has 1 to 1024 partitions"));
        }
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(TopicError::Corrupt("a partition holds 1 to 2^31 records"));
        }
        if !(1..=MAX_STRIDE).contains(&stride) {
            return Err(TopicError::Corrupt("a record stride is 1 B to 16 MiB"));
        }
        Ok(TopicParams {
            magic: TOPIC_MAGIC,
            partitions,
            capacity,
            stride,
            slot_size: (SLOT_HEADER + stride).next_multiple_of(8),
            overflow: overflow.raw(),
            group_retention_ms,
            lease_id: 0,
            lease_secs: 0,
            reserved: [0; 7],
        })
    }

    /// Bytes a topic with these parameters takes.
    pub fn total_len(&self) -> u64 {
        CONTROL_SIZE + self.partitions * (PARTITION_CONTROL_SIZE + self.slots_len())
    }

    /// Bytes of one partition's slots.
    pub fn slots_len(&self) -> u64 {
        self.capacity * self.slot_size
    }

    /// Offset of partition `p`'s control block from the topic's start.
    pub fn partition_control_at(&self, p: u64) -> u64 {
        CONTROL_SIZE + p * PARTITION_CONTROL_SIZE
    }

    /// Offset of partition `p`'s slots from the topic's start.
    pub fn slots_at(&self, p: u64) -> u64 {
        CONTROL_SIZE + self.partitions * PARTITION_CONTROL_SIZE + p * self.slots_len()
    }

    /// The overflow policy.
    pub fn overflow(&self) -> Overflow {
        Overflow::from_raw(self.overflow).unwrap_or(Overflow::Overwrite)
    }
}

/// The validated shape of a topic, cached by handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of partitions.
    pub partitions: u64,
    /// Records per partition.
    pub capacity: u64,
    /// Largest payload.
    pub stride: u64,
    /// Bytes per slot.
    pub slot_size: u64,
    /// The overflow policy.
    pub overflow: Overflow,
}

impl Geometry {
    /// Validates parameters read from a topic of `len` bytes.
    ///
    /// # Errors
    /// [`TopicError::Corrupt`].
    pub fn validate(params: &TopicParams, len: u64) -> Result<Geometry, TopicError> {
        if params.magic != TOPIC_MAGIC {
            return Err(TopicError::Corrupt("no topic magic"));
        }
        let overflow =
            Overflow::from_raw(params.overflow).ok_or(TopicError::Corrupt("overflow policy"))?;
        let expected = TopicParams::new(
            params.partitions,
            params.capacity,
            params.stride,
            overflow,
            params.group_retention_ms,
        )?;
        if expected.slot_size != params.slot_size {
            return Err(TopicError::Corrupt("slot size inconsistent with stride"));
        }
        // Scribbled counts may overflow: checked arithmetic.
        let total = params
            .capacity
            .checked_mul(params.slot_size)
            .and_then(|s| s.checked_add(PARTITION_CONTROL_SIZE))
            .and_then(|p| p.checked_mul(params.partitions))
            .and_then(|b| b.checked_add(CONTROL_SIZE))
            .ok_or(TopicError::Corrupt("topic size overflows"))?;
        if total > len {
            return Err(TopicError::Corrupt("topic larger than its memory"));
        }
        Ok(Geometry {
            partitions: params.partitions,
            capacity: params.capacity,
            stride: params.stride,
            slot_size: params.slot_size,
            overflow,
        })
    }

    /// `(slot index, stamp)` of an offset.
    #[inline]
    fn split(&self, offset: u64) -> (u64, u32) {
        let lap = offset / self.capacity;
        (offset % self.capacity, (lap as u32).wrapping_add(1))
    }
}

/// Keeps a value on its own 128-byte line.
#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

/// Rarely written topic-wide words.
#[repr(C)]
#[derive(Debug)]
struct Admin {
    /// Holder token of the admin lock (repair, group changes); 0 when free.
    lock: AtomicU64,
    /// Source of incarnations.
    next_incarnation: AtomicU64,
    /// Bit `g` set: group `g` holds producers back (backpressure only).
    holding: AtomicU64,
    /// Incarnations repaired.
    repairs: AtomicU64,
    /// Groups released for being idle with no live member.
    groups_released: AtomicU64,
    /// Non-zero once the topic is deleted (handles stop using it).
    deleted: AtomicU64,
}

/// One participant entry.
#[repr(C)]
#[derive(Debug)]
struct Entry {
    holder: AtomicU64,
    incarnation: AtomicU64,
}

/// One consumer group (128 bytes).
#[repr(C)]
#[derive(Debug)]
struct GroupEntry {
    /// 0 free; [`GROUP_CLAIMED`] while the name is written; else
    /// `GROUP_READY | len << 48 | hash & (2^48 - 1)`.
    state: AtomicU64,
    /// Unix milliseconds of the last commit or poll of a member.
    last_active_ms: AtomicU64,
    /// The name's bytes, little-endian words, zero-padded.
    name: [AtomicU64; GROUP_NAME_MAX / 8],
    /// Holder tokens of member processes (0: free).
    members: [AtomicU64; GROUP_MEMBERS],
}

/// The control block at a topic's start ([`CONTROL_SIZE`] bytes; see
/// docs/LAYOUT.md).
#[repr(C)]
#[derive(Debug)]
pub struct TopicControl {
    params: TopicParams,
    admin: Line<Admin>,
    participants: Line<[Entry; MAX_PARTICIPANTS]>,
    groups: Line<[GroupEntry; MAX_GROUPS]>,
    /// Membership and ownership of each group (see [`group`]).
    coords: Line<[GroupCoord; MAX_GROUPS]>,
}

/// Per-partition rarely-written counters (Relaxed).
#[repr(C)]
#[derive(Debug)]
struct PartitionCounters {
    /// READY records taken over by a later lap (overwrite only).
    overwrites: AtomicU64,
    /// Records readers found overwritten before they read them.
    lost: AtomicU64,
    /// Claims of dead producers turned into tombstones.
    holes: AtomicU64,
    /// Publishes that failed because repair came first.
    late_publishes: AtomicU64,
    /// `tail` advanced by one producer for another.
    tail_helps: AtomicU64,
    /// Appends that found the partition full (backpressure).
    full: AtomicU64,
}

/// A partition's control block ([`PARTITION_CONTROL_SIZE`] bytes).
#[repr(C)]
#[derive(Debug)]
pub struct PartitionControl {
    /// Next offset to claim.
    tail: Line<AtomicU64>,
    /// Consumers sleep here waiting for records.
    data_wait: Line<WaitPoint>,
    /// Producers sleep here waiting for space (backpressure).
    space_wait: Line<WaitPoint>,
    counters: Line<PartitionCounters>,
    /// Committed offset of each group in this partition.
    cursors: Line<[AtomicU64; MAX_GROUPS]>,
    /// Owner word of each group in this partition (see [`group`]).
    owners: OwnerLine,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<TopicParams>() == 128);
    assert!(size_of::<GroupEntry>() == 128);
    assert!(size_of::<TopicControl>() == CONTROL_SIZE as usize);
    assert!(offset_of!(TopicControl, admin) == 128);
    assert!(offset_of!(TopicControl, participants) == 256);
    assert!(offset_of!(TopicControl, groups) == 1280);
    assert!(size_of::<PartitionControl>() == PARTITION_CONTROL_SIZE as usize);
    assert!(offset_of!(PartitionControl, data_wait) == 128);
    assert!(offset_of!(PartitionControl, space_wait) == 256);
    assert!(offset_of!(PartitionControl, counters) == 384);
    assert!(offset_of!(PartitionControl, cursors) == 512);
    assert!(offset_of!(PartitionControl, owners) == 640);
    assert!(offset_of!(TopicControl, coords) == 3328);
};

fn zero<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl TopicControl {
    /// A control block on the heap (models and tests).
    pub fn new(params: TopicParams) -> TopicControl {
        TopicControl {
            params,
            admin: Line(Admin {
                lock: AtomicU64::new(0),
                next_incarnation: AtomicU64::new(0),
                holding: AtomicU64::new(0),
                repairs: AtomicU64::new(0),
                groups_released: AtomicU64::new(0),
                deleted: AtomicU64::new(0),
            }),
            participants: Line(std::array::from_fn(|_| Entry {
                holder: AtomicU64::new(0),
                incarnation: AtomicU64::new(0),
            })),
            groups: Line(std::array::from_fn(|_| GroupEntry {
                state: AtomicU64::new(0),
                last_active_ms: AtomicU64::new(0),
                name: zero(),
                members: zero(),
            })),
            coords: Line(std::array::from_fn(|_| GroupCoord::new())),
        }
    }

    /// Initialises a topic in zeroed memory nobody else uses yet: the
    /// parameters, with the magic written last (after a Release fence), so
    /// a reader that sees the magic (Acquire) sees the rest.
    ///
    /// # Safety
    /// `ptr` is valid for writes of `params.total_len()` bytes,
    /// 128-aligned, zeroed, and not accessed by anyone else until this
    /// returns.
    #[cfg(not(loom))]
    pub unsafe fn init_in_place(ptr: *mut TopicControl, params: TopicParams) {
        let unmarked = TopicParams { magic: 0, ..params };
        // SAFETY: the caller guarantees exclusive, valid, aligned memory;
        // zero bytes are valid atomics and the right initial values
        // (slots never written, offsets 0), so only the parameters need
        // writing.
        unsafe { std::ptr::addr_of_mut!((*ptr).params).write(unmarked) };
        // SAFETY: as above; the magic is the first, 8-aligned word of the
        // parameters. Stored with Release as an atomic (openers load it
        // with Acquire), so whoever sees it sees the rest.
        unsafe { &*std::ptr::addr_of!((*ptr).params.magic).cast::<std::sync::atomic::AtomicU64>() }
            .store(params.magic, std::sync::atomic::Ordering::Release);
    }

    /// Copies the parameters out (the copy is what gets validated).
    pub fn params(&self) -> TopicParams {
        // SAFETY: `params` is a valid, aligned field of `self`; every bit
        // pattern is a valid `TopicParams` (it is `Pod`).
        unsafe { std::ptr::read_volatile(&self.params) }
    }

    // ----- participants -----

    /// Registers a participant held by `token` (a non-zero process
    /// identity), reusing the entries of dead holders when full.
    ///
    /// # Errors
    /// `TooManyParticipants`, `AdminBusy`, `Corrupt`.
    pub fn attach<M: RingBytes, F: Futex + ?Sized>(
        &self,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
        futex: &F,
    ) -> Result<Member, TopicError> {
        assert_ne!(token, 0, "holder tokens are non-zero");
        let incarnation = self.next_incarnation();
        for attempt in 0..2 {
            for (index, entry) in self.participants.0.iter().enumerate() {
                if entry
                    .holder
                    .compare_exchange(0, token, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    entry
                        .incarnation
                        .store(u64::from(incarnation.get()), Ordering::Release);
                    return Ok(Member {
                        index: index as u32,
                        incarnation,
                    });
                }
            }
            if attempt == 0 {
                match self.repair_dead(token, &is_dead, partitions, futex) {
                    Ok(_) | Err(TopicError::AdminBusy) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(TopicError::TooManyParticipants)
    }

    /// A fresh incarnation, skipping values an entry still holds.
    fn next_incarnation(&self) -> Incarnation {
        loop {
            let n = self
                .admin
                .0
                .next_incarnation
                .fetch_add(1, Ordering::Relaxed);
            let value = (n % OWNER_MASK) as u32 + 1;
            let held = self
                .participants
                .0
                .iter()
                .any(|e| e.incarnation.load(Ordering::Acquire) == u64::from(value));
            if !held {
                return Incarnation::new(value).expect("value is in 1..2^24");
            }
        }
    }

    /// Unregisters a participant (a clean exit). With `left_claims` (an
    /// append may have been cut short, by a panic say), its claims are
    /// tombed first, so no claim outlives its incarnation's entry; that
    /// scans every slot.
    pub fn detach<M: RingBytes, F: Futex + ?Sized>(
        &self,
        me: &Member,
        token: u64,
        partitions: &[Partition<'_, M>],
        left_claims: bool,
        futex: &F,
    ) {
        let mine = me.incarnation.get();
        if left_claims {
            for p in partitions {
                p.tomb_claims(|owner| owner == mine, futex);
            }
        }
        let entry = &self.participants.0[me.index as usize];
        if entry
            .incarnation
            .compare_exchange(
                u64::from(me.incarnation.get()),
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            for p in partitions {
                p.ctrl.data_wait.0.clear(me.waiter());
                p.ctrl.space_wait.0.clear(me.waiter());
            }
            let _ = entry
                .holder
                .compare_exchange(token, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Participant entries in use.
    pub fn participants(&self) -> usize {
        self.participants
            .0
            .iter()
            .filter(|e| e.holder.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// The holder token of the participant with `incarnation` (0 if none).
    pub fn holder_of(&self, incarnation: Incarnation) -> u64 {
        self.participants
            .0
            .iter()
            .find(|e| e.incarnation.load(Ordering::Acquire) == u64::from(incarnation.get()))
            .map_or(0, |e| e.holder.load(Ordering::Acquire))
    }

    /// Repairs every participant whose holder `is_dead`: its unpublished
    /// claims in every partition become tombstones, its entry and waiter
    /// bits are cleared. Returns the claims tombed.
    ///
    /// # Errors
    /// `AdminBusy` if a live process holds the admin lock.
    pub fn repair_dead<M: RingBytes, F: Futex + ?Sized>(
        &self,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
        partitions: &[Partition<'_, M>],
        futex: &F,
    ) -> Result<u64, TopicError> {
        let _lock = self.lock(token, &is_dead)?;
        // The dead entries: (index, holder, incarnation). The incarnation
        // is the dead holder's if the holder is still there after reading
        // it (attach sets the holder first).
        let dead: Vec<(usize, u64, u64)> = self
            .participants
            .0
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                let holder = entry.holder.load(Ordering::Acquire);
                if holder == 0 || holder == token || !is_dead(holder) {
                    return None;
                }
                let inc = entry.incarnation.load(Ordering::Acquire);
                (entry.holder.load(Ordering::Acquire) == holder).then_some((index, holder, inc))
            })
            .collect();
        // One pass over the slots tombs the dead incarnations' claims and
        // the claims no entry owns (a scribbled word, or a claim whose
        // entry was freed without it; a claim is only made after its
        // incarnation is in an entry, so one whose owner no entry holds,
        // looked at after finding the claim, is nobody's).
        let held = |owner: u32| {
            self.participants
                .0
                .iter()
                .any(|e| e.incarnation.load(Ordering::Acquire) == u64::from(owner))
        };
        let is_dead_claim =
            |owner: u32| dead.iter().any(|&(_, _, inc)| inc == u64::from(owner)) || !held(owner);
        let mut tombed = 0;
        for p in partitions {
            tombed += p.tomb_claims(is_dead_claim, futex);
        }
        for &(index, holder, inc) in &dead {
            let entry = &self.participants.0[index];
            if inc != 0 {
                self.admin.0.repairs.fetch_add(1, Ordering::Relaxed);
            }
            // Released only after its claims are repaired, so the
            // incarnation is not handed out while one may remain.
            if entry
                .incarnation
                .compare_exchange(inc, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let waiter = Waiter::slot(index as u32);
                for p in partitions {
                    p.ctrl.data_wait.0.clear(waiter);
                    p.ctrl.space_wait.0.clear(waiter);
                }
                let _ =
                    entry
                        .holder
                        .compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        Ok(tombed)
    }

    /// The admin lock's holder token (0 when free), for a watcher of
    /// stopped holders.
    pub fn admin_holder(&self) -> u64 {
        self.admin.0.lock.load(Ordering::Acquire)
    }

    /// Incarnations repaired so far.
    pub fn repairs(&self) -> u64 {
        self.admin.0.repairs.load(Ordering::Relaxed)
    }

    /// Takes the admin lock, waiting up to a second for a live holder
    /// (admin work is short).
    fn lock_waiting(
        &self,
        token: u64,
        is_dead: &impl Fn(u64) -> bool,
    ) -> Result<AdminLock<'_>, TopicError> {
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match self.lock(token, is_dead) {
                Err(TopicError::AdminBusy) if Instant::now() < deadline => {
                    crate::sync::spin_loop();
                    #[cfg(not(loom))]
                    std::thread::yield_now();
                }
                other => return other,
            }
        }
    }

    /// Takes the admin lock for `token`, taking it over from a dead holder.
    fn lock(
        &self,
        token: u64,
        is_dead: &impl Fn(u64) -> bool,
    ) -> Result<AdminLock<'_>, TopicError> {
        let lock = &self.admin.0.lock;
        let mut current = lock.load(Ordering::Acquire);
        loop {
            if current != 0 && (current == token || !is_dead(current)) {
                return Err(TopicError::AdminBusy);
            }
            // AcqRel: see what the previous holder wrote; its unlock
            // (Release) pairs with this.
            match lock.compare_exchange(current, token, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(AdminLock { lock, token }),
                Err(now) => current = now,
            }
        }
    }

    // ----- consumer groups -----

    /// The group named `name`, added if new (under the admin lock,
    /// waiting up to a second for a live holder).
    ///
    /// # Errors
    /// `BadGroupName`, `TooManyGroups`, `AdminBusy`.
    pub fn group(
        &self,
        name: &str,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
    ) -> Result<GroupId, TopicError> {
        let want = group_state(name)?;
        if let Some(id) = self.find_group(name, want) {
            return Ok(id);
        }
        let _lock = self.lock_waiting(token, &is_dead)?;
        if let Some(id) = self.find_group(name, want) {
            return Ok(id);
        }
        let (index, entry) = self
            .groups
            .0
            .iter()
            .enumerate()
            .find(|(_, g)| g.state.load(Ordering::Acquire) & GROUP_READY == 0)
            .ok_or(TopicError::TooManyGroups)?;
        entry.state.store(GROUP_CLAIMED, Ordering::Relaxed);
        let mut padded = [0u8; GROUP_NAME_MAX];
        padded[..name.len()].copy_from_slice(name.as_bytes());
        for (word, bytes) in entry.name.iter().zip(padded.chunks(8)) {
            word.store(
                u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        // Release: a finder that sees the state sees the name.
        entry.state.store(want, Ordering::Release);
        Ok(GroupId(index))
    }

    fn find_group(&self, name: &str, want: u64) -> Option<GroupId> {
        self.groups.0.iter().enumerate().find_map(|(index, g)| {
            (g.state.load(Ordering::Acquire) == want && group_name(g).as_deref() == Some(name))
                .then_some(GroupId(index))
        })
    }

    /// Every group in use: `(id, name)`.
    pub fn groups(&self) -> Vec<(GroupId, String)> {
        self.groups
            .0
            .iter()
            .enumerate()
            .filter(|(_, g)| g.state.load(Ordering::Acquire) & GROUP_READY != 0)
            .filter_map(|(index, g)| group_name(g).map(|n| (GroupId(index), n)))
            .collect()
    }

    /// Enters `token` as a member of `group`, under the admin lock (so a
    /// producer releasing the group as idle cannot miss the newcomer):
    /// records the membership (a dead process's member word is reused),
    /// notes activity at `now_ms` and makes the group hold producers back
    /// (backpressure). Returns whether the membership was recorded (8 per
    /// group; a member not recorded keeps the group holding only through
    /// its activity).
    ///
    /// # Errors
    /// `AdminBusy` if a live process held the admin lock for a second.
    pub fn enter<M: RingBytes>(
        &self,
        group: GroupId,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
        now_ms: u64,
        partitions: &[Partition<'_, M>],
    ) -> Result<bool, TopicError> {
        let _lock = self.lock_waiting(token, &is_dead)?;
        let joined = self.join(group, token, &is_dead);
        self.touch(group, now_ms);
        self.hold(group, partitions);
        Ok(joined)
    }

    /// Records `token` as a member of `group` (once per call; a member
    /// entry of a dead process is reused). Returns whether there was room.
    fn join(&self, group: GroupId, token: u64, is_dead: impl Fn(u64) -> bool) -> bool {
        let members = &self.groups.0[group.0].members;
        for m in members {
            let held = m.load(Ordering::Acquire);
            if (held == 0 || is_dead(held))
                && m.compare_exchange(held, token, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Removes one membership of `token` from `group`.
    pub fn leave(&self, group: GroupId, token: u64) {
        for m in &self.groups.0[group.0].members {
            if m.compare_exchange(token, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Member tokens of `group`.
    pub fn members(&self, group: GroupId) -> Vec<u64> {
        self.groups.0[group.0]
            .members
            .iter()
            .map(|m| m.load(Ordering::Acquire))
            .filter(|&t| t != 0)
            .collect()
    }

    /// Notes activity of `group` at `now_ms` (unix milliseconds).
    pub fn touch(&self, group: GroupId, now_ms: u64) {
        let last = &self.groups.0[group.0].last_active_ms;
        // Skip the store while the value is fresh: members of one group
        // poll often, and the line is shared.
        if now_ms > last.load(Ordering::Relaxed).saturating_add(100) {
            last.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Unix milliseconds of `group`'s last activity.
    pub fn last_active_ms(&self, group: GroupId) -> u64 {
        self.groups.0[group.0]
            .last_active_ms
            .load(Ordering::Relaxed)
    }

    /// Makes `group` hold producers back (backpressure), if it does not
    /// already, its cursor in each partition raised past the records a
    /// producer that missed the hold may still take over.
    ///
    /// The bit is set first, then `fence(SeqCst)`, then `tail` is read;
    /// a producer loads `tail`, `fence(SeqCst)`, then the bits. A producer
    /// that missed the bit therefore loaded a `tail` no later than the one
    /// read here, `T`, and takes offsets up to `T` at most, overwriting up
    /// to `T - capacity`: the cursor starts at `T + 1 - capacity`.
    pub fn hold<M: RingBytes>(&self, group: GroupId, partitions: &[Partition<'_, M>]) {
        if self.params().overflow() != Overflow::Backpressure {
            return;
        }
        let bit = 1 << group.0;
        if self.admin.0.holding.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            // Holding already: its cursor protects what it has not
            // committed, and raising it past `tail - capacity` would give
            // those records away. Up to there it is a no-op for a real
            // hold (producers keep `tail` within a capacity of it) and
            // finishes a hold whose maker died half-way.
            for p in partitions {
                let tail = p.ctrl.tail.0.load(Ordering::Acquire);
                p.ctrl.cursors.0[group.0]
                    .fetch_max(tail.saturating_sub(p.geo.capacity), Ordering::AcqRel);
            }
            return;
        }
        if !mutant::active(Mutant::TopicHoldSkipFence) {
            fence(Ordering::SeqCst);
        }
        for p in partitions {
            let tail = p.ctrl.tail.0.load(Ordering::Acquire);
            let first_kept = if mutant::active(Mutant::TopicHoldOldestCursor) {
                tail.saturating_sub(p.geo.capacity)
            } else {
                (tail + 1).saturating_sub(p.geo.capacity)
            };
            p.ctrl.cursors.0[group.0].fetch_max(first_kept, Ordering::AcqRel);
        }
    }

    /// Groups holding producers back (a bit per group).
    pub fn holding(&self) -> u64 {
        self.admin.0.holding.load(Ordering::Acquire)
    }

    /// Stops every holding group whose members are all dead (or gone) and
    /// that has been idle for the topic's retention from holding producers
    /// back. Returns the groups released.
    ///
    /// Done under the admin lock (skipped while someone else holds it), so
    /// a member entering meanwhile (`enter`, under the same lock) is seen.
    pub fn release_idle_groups(
        &self,
        token: u64,
        now_ms: u64,
        is_dead: impl Fn(u64) -> bool,
    ) -> u64 {
        let retention = self.params().group_retention_ms;
        if self.holding() == 0 {
            return 0;
        }
        let Ok(_lock) = self.lock(token, &is_dead) else {
            return 0;
        };
        let holding = self.holding();
        let mut released = 0;
        for (index, g) in self.groups.0.iter().enumerate() {
            if holding & (1 << index) == 0 {
                continue;
            }
            let idle_ms = now_ms.saturating_sub(g.last_active_ms.load(Ordering::Relaxed));
            if idle_ms < retention {
                continue;
            }
            let any_alive = g.members.iter().any(|m| {
                let t = m.load(Ordering::Acquire);
                t != 0 && !is_dead(t)
            });
            let bit = 1 << index;
            if !any_alive && self.admin.0.holding.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                self.admin.0.groups_released.fetch_add(1, Ordering::Relaxed);
                released += 1;
            }
        }
        released
    }

    /// Marks the topic deleted: handles that look stop using it.
    pub fn mark_deleted(&self) {
        self.admin.0.deleted.store(1, Ordering::Release);
    }

    /// Whether the topic was deleted.
    pub fn is_deleted(&self) -> bool {
        self.admin.0.deleted.load(Ordering::Acquire) != 0
    }

    /// Groups released for idleness so far.
    pub fn groups_released(&self) -> u64 {
        self.admin.0.groups_released.load(Ordering::Relaxed)
    }
}

/// The state word of a ready group named `name`.
fn group_state(name: &str) -> Result<u64, TopicError> {
    if name.is_empty() || name.len() > GROUP_NAME_MAX {
        return Err(TopicError::BadGroupName);
    }
    Ok(GROUP_READY | ((name.len() as u64) << 48) | (hash_key(name.as_bytes()) & ((1 << 48) - 1)))
}

/// A ready group's name, if its bytes are a valid name.
fn group_name(g: &GroupEntry) -> Option<String> {
    let state = g.state.load(Ordering::Acquire);
    let len = ((state >> 48) & 0x7FFF) as usize;
    if state & GROUP_READY == 0 || len > GROUP_NAME_MAX {
        return None;
    }
    read_name(&g.name, len)
}

/// The first `len` bytes of `words` (little-endian) as a name: `None`
/// for an empty name or bytes that are not UTF-8.
fn read_name(words: &[AtomicU64], len: usize) -> Option<String> {
    if len == 0 || len > words.len() * 8 {
        return None;
    }
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .take(len)
        .collect();
    String::from_utf8(bytes).ok()
}

/// Held while repairing or changing groups; unlocks on drop.
struct AdminLock<'a> {
    lock: &'a AtomicU64,
    token: u64,
}

impl Drop for AdminLock<'_> {
    fn drop(&mut self) {
        let _ = self
            .lock
            .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
    }
}

/// A consumer group's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(usize);

impl GroupId {
    /// The entry index.
    pub fn index(self) -> usize {
        self.0
    }
}

/// A registered participant: its table entry and incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    index: u32,
    incarnation: Incarnation,
}

impl Member {
    /// Its incarnation, the owner of its claims.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Its registration bit on the topic's wait points.
    pub fn waiter(&self) -> Waiter {
        Waiter::slot(self.index)
    }
}

impl PartitionControl {
    /// A control block on the heap (models and tests).
    pub fn new() -> PartitionControl {
        PartitionControl {
            tail: Line(AtomicU64::new(0)),
            data_wait: Line(WaitPoint::new()),
            space_wait: Line(WaitPoint::new()),
            counters: Line(PartitionCounters {
                overwrites: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                holes: AtomicU64::new(0),
                late_publishes: AtomicU64::new(0),
                tail_helps: AtomicU64::new(0),
                full: AtomicU64::new(0),
            }),
            cursors: Line(zero()),
            owners: PartitionControl::new_owners(),
        }
    }
}

impl Default for PartitionControl {
    fn default() -> PartitionControl {
        PartitionControl::new()
    }
}

/// A claimed slot to fill and publish.
#[derive(Debug)]
#[must_use = "a claim must be published, or it wedges the slot until repaired"]
pub struct Claim {
    offset: u64,
    slot: u64,
    stamp: u32,
    owner: u32,
}

impl Claim {
    /// The record's absolute offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// What a read at an offset found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole record, copied into the buffer.
    Record,
    /// A tombstone (a dead producer's claim): no record at this offset.
    Hole,
    /// Nothing yet: the offset is not appended, or its producer is still
    /// writing it (then the blocker names the owner).
    Pending(Blocker),
    /// The record was overwritten before it was read: `lost` records from
    /// the offset read are gone; resume at `resume`.
    Lagged {
        /// Records skipped.
        lost: u64,
        /// The oldest offset still retained.
        resume: u64,
    },
}

/// A partition's positions and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// Next offset to append (every offset below it was claimed).
    pub tail: u64,
    /// The oldest offset still retained.
    pub oldest: u64,
    /// Records overwritten before every reader had them (overwrite).
    pub overwrites: u64,
    /// Records readers found overwritten.
    pub lost: u64,
    /// Dead producers' claims turned into tombstones.
    pub holes: u64,
    /// Publishes refused because repair came first.
    pub late_publishes: u64,
    /// `tail` helps.
    pub tail_helps: u64,
    /// Appends refused for a full partition (backpressure).
    pub full: u64,
}

/// A claim in progress, as [`Partition::claims`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimSeen {
    /// The slot.
    pub slot: u64,
    /// Its state word: the same claim keeps the same word.
    pub word: u64,
    /// The claimant.
    pub owner: Incarnation,
}

/// The partition algorithm bound to its control block and slots.
pub struct Partition<'a, M: RingBytes> {
    topic: &'a TopicControl,
    ctrl: &'a PartitionControl,
    slots: &'a M,
    geo: Geometry,
}

impl<'a, M: RingBytes> Partition<'a, M> {
    /// Binds a partition whose geometry was validated.
    ///
    /// # Panics
    /// If the slots do not fit `slots`.
    pub fn new(
        topic: &'a TopicControl,
        ctrl: &'a PartitionControl,
        slots: &'a M,
        geo: Geometry,
    ) -> Partition<'a, M> {
        assert!(geo.capacity * geo.slot_size <= slots.len());
        Partition {
            topic,
            ctrl,
            slots,
            geo,
        }
    }

    /// The state word of `slot`.
    fn state(&self, slot: u64) -> &'a AtomicU64 {
        // SAFETY: slot < capacity and capacity * slot_size <= len
        // (asserted in `new`); slot_size is a multiple of 8.
        unsafe { self.slots.header(slot * self.geo.slot_size) }
    }

    /// The `i`th word after the state word of `slot` (0: the length).
    fn word(&self, slot: u64, i: u64) -> &'a AtomicU64 {
        let off = slot * self.geo.slot_size + 8 + 8 * i;
        assert!(
            off + 8 <= (slot + 1) * self.geo.slot_size,
            "word in its slot"
        );
        // SAFETY: inside the slot (asserted), which is inside the region;
        // 8-aligned.
        unsafe { self.slots.header(off) }
    }

    /// Next offset to append.
    pub fn tail(&self) -> u64 {
        self.ctrl.tail.0.load(Ordering::Acquire)
    }

    /// The oldest offset still retained.
    pub fn oldest(&self) -> u64 {
        self.tail().saturating_sub(self.geo.capacity)
    }

    /// `group`'s committed offset.
    pub fn cursor(&self, group: GroupId) -> u64 {
        self.ctrl.cursors.0[group.0].load(Ordering::Acquire)
    }

    /// Positions and counters.
    pub fn stats(&self) -> PartitionStats {
        let c = &self.ctrl.counters.0;
        let tail = self.tail();
        PartitionStats {
            tail,
            oldest: tail.saturating_sub(self.geo.capacity),
            overwrites: c.overwrites.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            holes: c.holes.load(Ordering::Relaxed),
            late_publishes: c.late_publishes.load(Ordering::Relaxed),
            tail_helps: c.tail_helps.load(Ordering::Relaxed),
            full: c.full.load(Ordering::Relaxed),
        }
    }

    /// The first offset producers may not take (backpressure with holding
    /// groups), or `None`.
    fn limit(&self) -> Option<u64> {
        if self.geo.overflow != Overflow::Backpressure {
            return None;
        }
        let holding = self.topic.holding();
        if holding == 0 {
            return None;
        }
        let mut min = u64::MAX;
        for (g, cursor) in self.ctrl.cursors.0.iter().enumerate() {
            if holding & (1 << g) != 0 {
                // Acquire: what the group read before committing happened
                // before the slot is taken over.
                min = min.min(cursor.load(Ordering::Acquire));
            }
        }
        Some(min.saturating_add(self.geo.capacity))
    }

    /// Whether the record at `offset` is not readable yet: not appended,
    /// or claimed and not yet published (a reader waits). A slot that does
    /// not decode is not pending: reading it reports the error.
    pub fn pending(&self, offset: u64) -> bool {
        let tail = self.tail();
        if offset >= tail {
            return true;
        }
        let (slot, stamp) = self.geo.split(offset);
        let Ok(s) = State::decode(self.state(slot).load(Ordering::Acquire)) else {
            return false;
        };
        if s.stamp == stamp {
            s.tag == Tag::Writing
        } else {
            offset.saturating_add(self.geo.capacity) >= tail
                && (s.stamp.wrapping_sub(stamp) as i32) < 0
        }
    }

    /// The state word of the slot at `tail` (what a producer that got
    /// `Busy` waits to see change).
    pub fn tail_slot_word(&self) -> u64 {
        let (slot, _) = self.geo.split(self.tail());
        self.state(slot).load(Ordering::Acquire)
    }

    /// Whether a producer may append now as far as backpressure goes.
    pub fn has_room(&self) -> bool {
        self.limit().is_none_or(|limit| self.tail() < limit)
    }

    /// Claims the slot for the next offset for incarnation `me`.
    ///
    /// # Errors
    /// `TooLarge`; `Full` (backpressure); `Busy` behind a producer a lap
    /// behind; `Corrupt`.
    pub fn claim(&self, me: Incarnation, len: u64) -> Result<Claim, TopicError> {
        if len > self.geo.stride {
            return Err(TopicError::TooLarge {
                len,
                max: self.geo.stride,
            });
        }
        let mut stale = 0u32;
        loop {
            let pos = self.ctrl.tail.0.load(Ordering::Acquire);
            if pos >= MAX_OFFSET {
                return Err(TopicError::Corrupt("tail out of range"));
            }
            // Pairs with `hold`'s fence (see there): a producer that misses
            // a new hold took `tail` early enough to be harmless.
            if self.geo.overflow == Overflow::Backpressure
                && !mutant::active(Mutant::TopicHoldSkipFence)
            {
                fence(Ordering::SeqCst);
            }
            if !mutant::active(Mutant::TopicIgnoreBackpressure)
                && self.limit().is_some_and(|limit| pos >= limit)
            {
                self.ctrl.counters.0.full.fetch_add(1, Ordering::Relaxed);
                return Err(TopicError::Full);
            }
            let (slot, stamp) = self.geo.split(pos);
            let state = self.state(slot);
            let word = state.load(Ordering::Acquire);
            let s = State::decode(word)?;
            if s.stamp == stamp {
                // Someone took `pos` and has not advanced `tail` yet.
                if self.cas_tail(pos) {
                    self.ctrl
                        .counters
                        .0
                        .tail_helps
                        .fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if s.stamp == stamp.wrapping_sub(1) {
                if s.tag == Tag::Writing && !mutant::active(Mutant::TopicClaimOverWriter) {
                    return Err(TopicError::Busy(Blocker::Claimed {
                        owner: Incarnation::new(s.owner)
                            .map_err(|_| TopicError::Corrupt("claim without owner"))?,
                        word,
                    }));
                }
                if s.tag == Tag::Empty && s.stamp != 0 {
                    return Err(TopicError::Corrupt("empty slot with a stamp"));
                }
                let mine = State::new(stamp, Tag::Writing, me.get()).word();
                if state
                    .compare_exchange(word, mine, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                // The seqlock's writer fence: a reader that sees any of the
                // words written after it also sees the claim when it checks
                // the state again.
                if !mutant::active(Mutant::TopicSkipWriterFence) {
                    fence(Ordering::Release);
                }
                if s.tag == Tag::Ready && self.geo.overflow == Overflow::Overwrite {
                    self.ctrl
                        .counters
                        .0
                        .overwrites
                        .fetch_add(1, Ordering::Relaxed);
                }
                crash::point(CrashPoint::TopicAfterClaim);
                self.cas_tail(pos);
                return Ok(Claim {
                    offset: pos,
                    slot,
                    stamp,
                    owner: me.get(),
                });
            }
            // The slot is of another lap than `pos` or the one before: our
            // `tail` is stale (or the slot scribbled on, if it stays so).
            stale += 1;
            if stale >= STALE_LIMIT && self.ctrl.tail.0.load(Ordering::Acquire) == pos {
                return Err(TopicError::Corrupt("slot stamp inconsistent with tail"));
            }
            crate::sync::spin_loop();
        }
    }

    /// Moves `tail` from `pos` to `pos + 1`; whether this call did.
    fn cas_tail(&self, pos: u64) -> bool {
        self.ctrl
            .tail
            .0
            .compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Writes the record's length and payload into its claimed slot.
    pub fn fill(&self, claim: &Claim, payload: &[u8]) {
        assert!(
            payload.len() as u64 <= self.geo.stride,
            "claimed for this length"
        );
        self.word(claim.slot, 0)
            .store(payload.len() as u64, Ordering::Relaxed);
        let at = claim.slot * self.geo.slot_size + SLOT_HEADER;
        let store = |i: usize, word: u64| {
            // SAFETY: the payload fits the slot (asserted above: at most
            // the stride, and a slot holds the stride rounded up to 8),
            // inside the region; 8-aligned.
            unsafe { self.slots.header(at + 8 * i as u64) }.store(word, Ordering::Relaxed);
        };
        let words = payload.chunks_exact(8);
        let (full, rest) = (words.len(), words.remainder());
        for (i, chunk) in words.enumerate() {
            if i == full / 2 {
                crash::point(CrashPoint::TopicMidWrite);
            }
            store(i, u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            store(full, u64::from_le_bytes(last));
        }
    }

    /// Publishes a filled claim; returns its offset.
    ///
    /// # Errors
    /// `ClaimRepaired` if repair tombed the claim first.
    pub fn publish(&self, claim: Claim) -> Result<u64, TopicError> {
        let from = State::new(claim.stamp, Tag::Writing, claim.owner).word();
        let to = State::new(claim.stamp, Tag::Ready, 0).word();
        // Release: a reader that sees READY sees the record's words.
        let release = order(
            Ordering::Release,
            Mutant::TopicPublishRelaxed,
            Ordering::Relaxed,
        );
        match self
            .state(claim.slot)
            .compare_exchange(from, to, release, Ordering::Relaxed)
        {
            Ok(_) => Ok(claim.offset),
            Err(_) => {
                self.ctrl
                    .counters
                    .0
                    .late_publishes
                    .fetch_add(1, Ordering::Relaxed);
                Err(TopicError::ClaimRepaired)
            }
        }
    }

    /// Claims, fills and publishes one record (without waking anyone).
    ///
    /// # Errors
    /// As [`Partition::claim`] and [`Partition::publish`].
    pub fn append(&self, me: Incarnation, payload: &[u8]) -> Result<u64, TopicError> {
        let claim = self.claim(me, payload.len() as u64)?;
        self.fill(&claim, payload);
        self.publish(claim)
    }

    /// Wakes consumers asleep on this partition.
    pub fn wake_consumers<F: Futex + ?Sized>(&self, futex: &F) {
        self.ctrl.data_wait.0.wake(futex);
    }

    /// Wakes producers waiting for space.
    pub fn wake_producers<F: Futex + ?Sized>(&self, futex: &F) {
        self.ctrl.space_wait.0.wake(futex);
    }

    /// Where consumers sleep.
    pub fn data_wait_point(&self) -> &'a WaitPoint {
        &self.ctrl.data_wait.0
    }

    /// Where producers sleep under backpressure.
    pub fn space_wait_point(&self) -> &'a WaitPoint {
        &self.ctrl.space_wait.0
    }

    /// Reads the record at `offset` into `out` (replacing its contents).
    ///
    /// # Errors
    /// `Corrupt` for a scribbled slot.
    pub fn read(&self, offset: u64, out: &mut Vec<u8>) -> Result<Read, TopicError> {
        let (slot, stamp) = self.geo.split(offset);
        let state = self.state(slot);
        // Acquire: pairs with the publish (Release), so the words copied
        // below are the record's.
        let first = state.load(order(
            Ordering::Acquire,
            Mutant::TopicReadRelaxed,
            Ordering::Relaxed,
        ));
        let s = State::decode(first)?;
        if s.stamp != stamp {
            // Another lap's record: not appended yet, or overwritten. The
            // u64 `tail` decides (stamps are 32 bits and wrap).
            let tail = self.tail();
            if offset >= tail {
                return Ok(Read::Pending(Blocker::Idle(first)));
            }
            // `offset + capacity` was claimed: its slot no longer holds
            // `offset`'s record.
            if offset.saturating_add(self.geo.capacity) < tail {
                return Ok(self.lagged(offset));
            }
            // Within the last lap: the slot's stamp tells (a claim made
            // between the two loads shows as pending).
            return Ok(if (s.stamp.wrapping_sub(stamp) as i32) > 0 {
                self.lagged(offset)
            } else {
                Read::Pending(Blocker::Idle(first))
            });
        }
        match s.tag {
            Tag::Writing => {
                return Ok(Read::Pending(match Incarnation::new(s.owner) {
                    Ok(owner) => Blocker::Claimed { owner, word: first },
                    Err(_) => Blocker::Idle(first),
                }));
            }
            Tag::Tomb => return Ok(Read::Hole),
            Tag::Empty => return Err(TopicError::Corrupt("empty slot stamped with a lap")),
            Tag::Ready => {}
        }
        let len = self.word(slot, 0).load(Ordering::Relaxed);
        let fits = len <= self.geo.stride;
        if fits {
            let words = len.div_ceil(8) as usize;
            out.clear();
            out.reserve(words * 8);
            let payload = slot * self.geo.slot_size + SLOT_HEADER;
            let dst = out.spare_capacity_mut()[..words * 8]
                .as_mut_ptr()
                .cast::<u8>();
            for i in 0..words {
                // SAFETY: the payload's words lie inside the slot (`len` is
                // at most the stride, and a slot holds the header and the
                // stride rounded up to 8), inside the region; 8-aligned.
                let word = unsafe { self.slots.header(payload + 8 * i as u64) };
                let bytes = word.load(Ordering::Relaxed).to_le_bytes();
                // SAFETY: `dst` has room for `words * 8` bytes (reserved
                // above); an unaligned write of 8 of them at `8 * i`.
                unsafe { dst.add(8 * i).cast::<[u8; 8]>().write_unaligned(bytes) };
            }
            // SAFETY: the loop above initialised the first `words * 8`
            // bytes, and `len` is at most that.
            unsafe { out.set_len(len as usize) };
        }
        // The seqlock's reader fence: if any word copied above was written
        // by a later claimant, the state loaded below shows its claim.
        if !mutant::active(Mutant::TopicSkipReaderRecheck) {
            if !mutant::active(Mutant::TopicSkipReaderFence) {
                fence(Ordering::Acquire);
            }
            if state.load(Ordering::Relaxed) != first {
                return Ok(self.lagged(offset));
            }
        }
        if !fits {
            return Err(TopicError::Corrupt("record length exceeds the stride"));
        }
        Ok(Read::Record)
    }

    /// The answer for a reader at `offset` whose record was overwritten.
    fn lagged(&self, offset: u64) -> Read {
        let resume = self.oldest().max(offset.saturating_add(1));
        let lost = resume - offset;
        self.ctrl.counters.0.lost.fetch_add(lost, Ordering::Relaxed);
        Read::Lagged { lost, resume }
    }

    /// Commits `offset` for `group` (never moves its cursor back) and
    /// wakes producers waiting for space.
    pub fn commit<F: Futex + ?Sized>(&self, group: GroupId, offset: u64, futex: &F) {
        // Release: the group's reads of the records below `offset` happen
        // before a producer that sees the cursor takes their slots.
        let before = self.ctrl.cursors.0[group.0].fetch_max(offset, Ordering::AcqRel);
        if offset > before && self.geo.overflow == Overflow::Backpressure {
            self.wake_producers(futex);
        }
    }

    /// WRITING claims in progress (for a watcher of stuck producers).
    pub fn claims(&self) -> Vec<ClaimSeen> {
        (0..self.geo.capacity)
            .filter_map(|slot| {
                let word = self.state(slot).load(Ordering::Acquire);
                let s = State::decode(word).ok()?;
                (s.tag == Tag::Writing)
                    .then(|| Incarnation::new(s.owner).ok())
                    .flatten()
                    .map(|owner| ClaimSeen { slot, word, owner })
            })
            .collect()
    }

    /// Turns the WRITING claims whose owner `which` picks into tombstones,
    /// each by CAS (a late publish then fails), and wakes everyone.
    /// Returns the claims tombed; a slot whose word does not decode is
    /// left alone (it is reported to whoever reads or claims it).
    fn tomb_claims<F: Futex + ?Sized>(&self, which: impl Fn(u32) -> bool, futex: &F) -> u64 {
        let mut tombed = 0;
        for slot in 0..self.geo.capacity {
            let state = self.state(slot);
            let word = state.load(Ordering::Acquire);
            let Ok(s) = State::decode(word) else {
                continue;
            };
            if s.tag == Tag::Writing && which(s.owner) {
                let tomb = State::new(s.stamp, Tag::Tomb, 0).word();
                let order = if mutant::active(Mutant::TopicRepairPlainStore) {
                    state.store(tomb, Ordering::Release);
                    Ok(word)
                } else {
                    state.compare_exchange(word, tomb, Ordering::AcqRel, Ordering::Relaxed)
                };
                if order.is_ok() {
                    tombed += 1;
                }
            }
        }
        if tombed > 0 {
            self.ctrl
                .counters
                .0
                .holes
                .fetch_add(tombed, Ordering::Relaxed);
            self.ctrl.data_wait.0.notify(futex);
            self.ctrl.space_wait.0.notify(futex);
        }
        tombed
    }
}

/// Consecutive sightings of a slot of an unexpected lap, with `tail`
/// unchanged, before the partition is judged corrupt.
#[cfg(not(loom))]
const STALE_LIMIT: u32 = 1 << 16;
#[cfg(loom)]
const STALE_LIMIT: u32 = 4;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::{HeapRing, HeapTopic, NoFutex};

    fn inc(n: u32) -> Incarnation {
        Incarnation::new(n).unwrap()
    }

    fn read_all(p: &Partition<'_, HeapRing>, from: u64) -> (Vec<Vec<u8>>, u64) {
        let mut at = from;
        let mut out = Vec::new();
        let mut lost = 0;
        loop {
            let mut buf = Vec::new();
            match p.read(at, &mut buf).unwrap() {
                Read::Record => {
                    out.push(buf);
                    at += 1;
                }
                Read::Hole => at += 1,
                Read::Pending(_) => return (out, lost),
                Read::Lagged { lost: l, resume } => {
                    lost += l;
                    at = resume;
                }
            }
        }
    }

    #[test]
    fn records_round_trip_and_keep_absolute_offsets_across_laps() {
        let t = HeapTopic::new(1, 3, 20, Overflow::Overwrite);
        let p = t.partition(0);
        for i in 0..3u64 {
            assert_eq!(p.append(inc(1), format!("rec-{i}").as_bytes()), Ok(i));
        }
        let (got, lost) = read_all(&p, 0);
        assert_eq!(
            got,
            vec![b"rec-0".to_vec(), b"rec-1".to_vec(), b"rec-2".to_vec()]
        );
        assert_eq!(lost, 0);
        for i in 3..8u64 {
            assert_eq!(p.append(inc(1), format!("rec-{i}").as_bytes()), Ok(i));
        }
        // Offsets 0..5 were overwritten: a reader at 0 lags by 5.
        let (got, lost) = read_all(&p, 0);
        assert_eq!(lost, 5);
        assert_eq!(
            got,
            vec![b"rec-5".to_vec(), b"rec-6".to_vec(), b"rec-7".to_vec()]
        );
        assert_eq!(p.stats().overwrites, 5);
        assert_eq!(p.stats().oldest, 5);
    }

    #[test]
    fn oversized_records_are_refused() {
        let t = HeapTopic::new(1, 2, 8, Overflow::Overwrite);
        let p = t.partition(0);
        assert_eq!(
            p.append(inc(1), &[0; 9]),
            Err(TopicError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!(p.append(inc(1), &[7; 8]), Ok(0));
    }

    #[test]
    fn a_writer_a_lap_behind_blocks_the_slot_until_repaired() {
        let t = HeapTopic::new(1, 1, 8, Overflow::Overwrite);
        let p = t.partition(0);
        let dead = t
            .ctrl
            .attach(11, |_| false, &t.partitions(), &NoFutex)
            .unwrap();
        let claim = p.claim(dead.incarnation(), 3).unwrap();
        // A reader waits behind the claim and names its owner.
        let mut buf = Vec::new();
        assert!(matches!(
            p.read(0, &mut buf),
            Ok(Read::Pending(Blocker::Claimed { owner, .. })) if owner == dead.incarnation()
        ));
        // The next lap's producer may not write the same slot.
        assert!(matches!(p.claim(inc(2), 3), Err(TopicError::Busy(_))));
        let tombed = t
            .ctrl
            .repair_dead(22, |h| h == 11, &t.partitions(), &NoFutex)
            .unwrap();
        assert_eq!(tombed, 1);
        assert_eq!(p.read(0, &mut buf), Ok(Read::Hole));
        assert_eq!(p.publish(claim), Err(TopicError::ClaimRepaired));
        assert_eq!(p.append(inc(2), b"abc"), Ok(1));
        let (got, _) = read_all(&p, 1);
        assert_eq!(got, vec![b"abc".to_vec()]);
        assert_eq!(p.stats().holes, 1);
        assert_eq!(p.stats().late_publishes, 1);
    }

    #[test]
    fn backpressure_waits_for_the_slowest_holding_group() {
        let t = HeapTopic::new(1, 2, 8, Overflow::Backpressure);
        let p = t.partition(0);
        let fast = t.ctrl.group("fast", 1, |_| false).unwrap();
        let slow = t.ctrl.group("slow", 1, |_| false).unwrap();
        assert_ne!(fast, slow);
        assert_eq!(t.ctrl.group("slow", 1, |_| false).unwrap(), slow);
        t.ctrl.hold(fast, &t.partitions());
        t.ctrl.hold(slow, &t.partitions());
        assert_eq!(p.append(inc(1), b"a"), Ok(0));
        assert_eq!(p.append(inc(1), b"b"), Ok(1));
        assert_eq!(p.append(inc(1), b"c"), Err(TopicError::Full));
        p.commit(fast, 2, &NoFutex);
        assert_eq!(p.append(inc(1), b"c"), Err(TopicError::Full));
        p.commit(slow, 1, &NoFutex);
        assert_eq!(p.append(inc(1), b"c"), Ok(2));
        assert_eq!(p.append(inc(1), b"d"), Err(TopicError::Full));
        // A slow group whose members are dead and idle past retention
        // (0 ms here) stops holding.
        assert!(t.ctrl.join(fast, 5, |_| false));
        assert!(t.ctrl.join(slow, 77, |_| false));
        assert_eq!(t.ctrl.release_idle_groups(1, 10_000, |_| false), 0);
        assert_eq!(t.ctrl.release_idle_groups(1, 10_000, |h| h == 77), 1);
        assert_eq!(t.ctrl.release_idle_groups(1, 10_000, |h| h == 77), 0);
        assert_eq!(t.ctrl.groups_released(), 1);
        assert_eq!(p.append(inc(1), b"d"), Ok(3));
        assert_eq!(p.stats().overwrites, 0);
    }

    #[test]
    fn claims_nobody_owns_are_tombed_and_a_scribbled_slot_does_not_stop_repair() {
        let t = HeapTopic::new(2, 2, 8, Overflow::Overwrite);
        let (p0, p1) = (t.partition(0), t.partition(1));
        // Partition 0: one word that does not decode.
        p0.state(1).store(0xFF << OWNER_BITS, Ordering::Relaxed);
        // Partition 1: a claim of an incarnation no entry holds.
        let orphan = p1.claim(inc(9), 1).unwrap();
        let live = t
            .ctrl
            .attach(5, |_| false, &t.partitions(), &NoFutex)
            .unwrap();
        let kept = p1.claim(live.incarnation(), 1).unwrap();
        assert_eq!(
            t.ctrl.repair_dead(1, |_| false, &t.partitions(), &NoFutex),
            Ok(1)
        );
        assert_eq!(p1.publish(orphan), Err(TopicError::ClaimRepaired));
        assert_eq!(
            p1.publish(kept),
            Ok(1),
            "a live participant's claim is left alone"
        );
    }

    #[test]
    fn detach_tombs_a_claim_left_behind() {
        let t = HeapTopic::new(1, 2, 8, Overflow::Overwrite);
        let p = t.partition(0);
        let me = t
            .ctrl
            .attach(5, |_| false, &t.partitions(), &NoFutex)
            .unwrap();
        let left = p.claim(me.incarnation(), 1).unwrap();
        t.ctrl.detach(&me, 5, &t.partitions(), true, &NoFutex);
        assert_eq!(t.ctrl.participants(), 0);
        assert_eq!(p.read(0, &mut Vec::new()), Ok(Read::Hole));
        assert_eq!(p.publish(left), Err(TopicError::ClaimRepaired));
    }

    #[test]
    fn a_reader_laps_behind_is_told_it_lagged_whatever_the_stamp_says() {
        let t = HeapTopic::new(1, 1, 8, Overflow::Overwrite);
        let p = t.partition(0);
        // 2^31 + 1 records appended: the slot's stamp is 2^31 + 1 laps
        // ahead of offset 0's, which a 32-bit comparison reads as behind.
        let last = 1u64 << 31;
        p.ctrl.tail.0.store(last + 1, Ordering::Relaxed);
        p.state(0).store(
            State::new((last + 1) as u32, Tag::Ready, 0).word(),
            Ordering::Relaxed,
        );
        assert_eq!(
            p.read(0, &mut Vec::new()),
            Ok(Read::Lagged {
                lost: last,
                resume: last
            })
        );
        assert_eq!(
            p.read(last + 1, &mut Vec::new()),
            Ok(Read::Pending(Blocker::Idle(
                p.state(0).load(Ordering::Relaxed)
            )))
        );
        assert!(matches!(
            p.read(u64::MAX, &mut Vec::new()),
            Ok(Read::Pending(_))
        ));
    }

    #[test]
    fn group_names_are_checked_and_listed() {
        let t = HeapTopic::new(1, 2, 8, Overflow::Overwrite);
        assert_eq!(
            t.ctrl.group("", 1, |_| false),
            Err(TopicError::BadGroupName)
        );
        assert_eq!(
            t.ctrl.group(&"x".repeat(49), 1, |_| false),
            Err(TopicError::BadGroupName)
        );
        let a = t.ctrl.group("processors", 1, |_| false).unwrap();
        let names: Vec<String> = t.ctrl.groups().into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, vec!["processors".to_string()]);
        assert_eq!(a.index(), 0);
    }

    #[test]
    fn scribbled_slots_give_errors_not_panics() {
        let t = HeapTopic::new(1, 2, 8, Overflow::Overwrite);
        let p = t.partition(0);
        assert_eq!(p.append(inc(1), b"ok"), Ok(0));
        // A length past the stride.
        p.word(0, 0).store(1 << 40, Ordering::Relaxed);
        assert!(matches!(
            p.read(0, &mut Vec::new()),
            Err(TopicError::Corrupt(_))
        ));
        // An unknown tag.
        p.state(1).store(0xFF << OWNER_BITS, Ordering::Relaxed);
        assert!(matches!(
            p.read(1, &mut Vec::new()),
            Err(TopicError::Corrupt(_))
        ));
        assert!(matches!(p.claim(inc(1), 1), Err(TopicError::Corrupt(_))));
    }

    #[test]
    fn threads_append_every_record_in_per_producer_order() {
        let t = HeapTopic::new(1, 4096, 16, Overflow::Overwrite);
        let p = t.partition(0);
        std::thread::scope(|s| {
            for producer in 1..=2u32 {
                let p = &p;
                s.spawn(move || {
                    for i in 0..2000u64 {
                        let rec = [u64::from(producer).to_le_bytes(), i.to_le_bytes()].concat();
                        p.append(inc(producer), &rec).unwrap();
                    }
                });
            }
        });
        let (got, lost) = read_all(&p, 0);
        assert_eq!((got.len(), lost), (4000, 0));
        let mut next = [0u64; 3];
        for rec in got {
            let producer = u64::from_le_bytes(rec[..8].try_into().unwrap()) as usize;
            let i = u64::from_le_bytes(rec[8..].try_into().unwrap());
            assert_eq!(i, next[producer]);
            next[producer] += 1;
        }
    }
}

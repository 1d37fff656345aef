//! The FabricHashMap: a chained hash map in shared memory with lock-free
//! reads, one writer at a time, and epoch-based reuse of freed memory
//! across processes.
//!
//! **Layout.** A [`MapControl`] block, then `buckets` head words, then
//! arena 0; more arenas (each a lease of its own) are added as the map
//! fills, so `buckets` is a hash width, not a capacity. An entry lives in a
//! block of an arena: a block is `64 << class` bytes, starts with a state
//! word (`tag << 56 | class << 48 | epoch`) and a link word (free list or
//! limbo), then the entry: its `next` word, the key's hash, the key and
//! value lengths, the key, the value. A reference to a block is
//! `arena << 40 | offset`; 0 is null (offset 0 is never a block).
//!
//! **Writers** take the map's writer lock (a CAS of the holder's process
//! token into the lock word; a dead holder's lock is taken over). Under
//! it they allocate, fill the entry, and publish it with one Release store
//! into the bucket head or a predecessor's `next`: an insert links the new
//! entry at the head; an overwrite links the new entry in place of the old
//! one (whose `next` it copies), so a reader sees the old or the new value,
//! never neither; a delete stores the old entry's successor into its
//! predecessor. Published entries are never written again except their
//! `next` word and their state, so readers need no retry loop.
//!
//! **Readers** pin the current epoch in a pin slot (a store and a
//! `fence(SeqCst)`), walk a chain with Acquire loads and copy out. Every
//! reference, length and class read is bounds-checked: a scribbled map
//! yields [`MapError::Corrupt`], never UB.
//!
//! **Reclamation** (crossbeam-epoch's rule, across processes): an unlinked
//! block is *retired* with the global epoch and kept in a FIFO limbo list.
//! The global epoch advances only when every pinned slot is pinned at it;
//! a block retired at `e` is freed once the epoch reaches `e + 2`, when no
//! reader that could have seen it is still pinned. A pin slot names its
//! owner process; a dead owner's pin is cleared by the next writer that
//! finds it in the way, and a live reader holding a pin too long is a
//! supervisor's business (it kills it, as it kills a stuck claimer).
//!
//! **Crash repair.** Every block's state word says what it is: FREE, USED
//! or RETIRED. A writer killed at any instruction leaves the lock naming a
//! dead process; whoever takes the lock over (the next writer, or the
//! supervisor after the death) rebuilds the allocator from the block
//! states and the bucket chains: a USED block that no chain reaches was
//! allocated or unlinked by the dead writer and is retired (not freed: a
//! reader may still see it), free lists and limbo are rebuilt from FREE
//! and RETIRED blocks, and the accounting from what was found.

use std::collections::HashSet;
use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use crate::crash::{self, CrashPoint};
use crate::edge::RingBytes;
use crate::mutant::{self, Mutant, order};
use crate::sync::{AtomicU64, Ordering, fence};

/// Magic at the start of a map's control block ("GRAFMAP1").
pub const MAP_MAGIC: u64 = u64::from_le_bytes(*b"GRAFMAP1");
/// Size classes: blocks of `64 << class` bytes.
#[cfg(not(loom))]
pub const CLASSES: usize = 32;
/// Size classes (fewer under loom).
#[cfg(loom)]
pub const CLASSES: usize = 3;
/// Arenas a map can have (arena 0 included).
#[cfg(not(loom))]
pub const MAX_ARENAS: usize = 64;
/// Arenas a map can have (fewer under loom).
#[cfg(loom)]
pub const MAX_ARENAS: usize = 2;
/// Pin slots (readers pinned at once, across processes).
#[cfg(not(loom))]
pub const PIN_SLOTS: usize = 128;
/// Pin slots (fewer under loom).
#[cfg(loom)]
pub const PIN_SLOTS: usize = 2;
/// Smallest block.
pub const MIN_BLOCK: u64 = 64;
/// Offset of an arena's first block (offset 0 is never a block).
pub const ARENA_START: u64 = 64;
/// Bytes of a block before its key: state, link, next, hash, lengths.
pub const ENTRY_OVERHEAD: u64 = 40;
/// Longest key.
pub const MAX_KEY_LEN: u64 = 4096;
/// Largest block (so a value is below 1 GiB).
pub const MAX_BLOCK: u64 = 1 << 30;
/// Largest bucket count.
pub const MAX_BUCKETS: u64 = 1 << 24;

const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 48) - 1;
const NEXT: u64 = 16;
const HASH: u64 = 24;
const KEY: u64 = 40;

/// A block's tag (top byte of its state word; 0 means never allocated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Free = 1,
    Used = 2,
    Retired = 3,
}

/// A decoded block state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockState {
    tag: Tag,
    class: u8,
    epoch: u64,
}

impl BlockState {
    fn word(self) -> u64 {
        (u64::from(self.tag as u8) << 56)
            | (u64::from(self.class) << 48)
            | (self.epoch & EPOCH_MASK)
    }

    fn decode(word: u64) -> Result<BlockState, MapError> {
        let tag = match word >> 56 {
            1 => Tag::Free,
            2 => Tag::Used,
            3 => Tag::Retired,
            _ => return Err(MapError::Corrupt("unknown block tag")),
        };
        let class = ((word >> 48) & 0xFF) as u8;
        if usize::from(class) >= CLASSES {
            return Err(MapError::Corrupt("block class out of range"));
        }
        Ok(BlockState {
            tag,
            class,
            epoch: word & EPOCH_MASK,
        })
    }
}

/// Bytes of a block of `class`.
fn class_size(class: u8) -> u64 {
    MIN_BLOCK << class
}

/// The class whose blocks hold `bytes`.
fn class_for(bytes: u64) -> Option<u8> {
    let size = bytes.max(MIN_BLOCK).checked_next_power_of_two()?;
    let class = (size / MIN_BLOCK).trailing_zeros();
    (size <= MAX_BLOCK && (class as usize) < CLASSES).then_some(class as u8)
}

/// The 64-bit FNV-1a hash of a key (stable across processes and builds).
pub fn hash_key(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a map operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapError {
    /// The key is empty or longer than [`MAX_KEY_LEN`].
    BadKey {
        /// The key's length.
        len: u64,
    },
    /// The entry does not fit the largest block.
    TooLarge {
        /// Bytes the entry needs.
        needed: u64,
        /// The largest block.
        max: u64,
    },
    /// No free block, nothing reclaimable, and no new arena could be added
    /// (the pool is full, or the map has [`MAX_ARENAS`] arenas).
    OutOfMemory {
        /// Bytes asked for.
        needed: u64,
    },
    /// Arena `index` is named by the map but could not be mapped.
    ArenaUnavailable {
        /// The arena.
        index: u32,
    },
    /// Every pin slot is held by a live process.
    TooManyReaders,
    /// The writer lock stayed with a live holder past the deadline.
    Busy {
        /// The holder's process token.
        holder: u64,
    },
    /// The shared bytes are inconsistent (scribbled on).
    Corrupt(&'static str),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapError::BadKey { len } => {
                write!(f, "key of {len} bytes: keys are 1 to {MAX_KEY_LEN} bytes")
            }
            MapError::TooLarge { needed, max } => {
                write!(
                    f,
                    "entry of {needed} bytes exceeds the largest block ({max} bytes)"
                )
            }
            MapError::OutOfMemory { needed } => write!(
                f,
                "no memory for a {needed}-byte entry: the map could not add an arena"
            ),
            MapError::ArenaUnavailable { index } => write!(f, "arena {index} cannot be mapped"),
            MapError::TooManyReaders => {
                write!(f, "all {PIN_SLOTS} pin slots are held by live processes")
            }
            MapError::Busy { holder } => {
                write!(f, "the writer lock is held by a live process ({holder:#x})")
            }
            MapError::Corrupt(what) => write!(f, "map corrupt: {what}"),
        }
    }
}

impl std::error::Error for MapError {}

/// Immutable parameters, written once by the creator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct MapParams {
    /// [`MAP_MAGIC`].
    pub magic: u64,
    /// Number of buckets, `1..=MAX_BUCKETS`.
    pub buckets: u64,
    /// Reserved, zero.
    pub reserved: [u64; 14],
}

impl MapParams {
    /// Parameters for `buckets` buckets.
    ///
    /// # Errors
    /// `buckets` is zero or past [`MAX_BUCKETS`].
    pub fn new(buckets: u64) -> Result<MapParams, MapError> {
        if !(1..=MAX_BUCKETS).contains(&buckets) {
            return Err(MapError::Corrupt("bucket count must be 1 to 2^24"));
        }
        Ok(MapParams {
            magic: MAP_MAGIC,
            buckets,
            reserved: [0; 14],
        })
    }

    /// Bytes the bucket heads take (rounded to 128).
    pub fn buckets_len(&self) -> u64 {
        (self.buckets * 8).next_multiple_of(128)
    }
}

/// Keeps each group of words on cache lines of its own.
#[repr(C, align(128))]
#[derive(Debug)]
struct Line<T>(T);

/// Allocator state and accounting, written under the writer lock.
#[repr(C)]
#[derive(Debug)]
struct Heap {
    free: [AtomicU64; CLASSES],
    limbo_head: AtomicU64,
    limbo_tail: AtomicU64,
    arena_count: AtomicU64,
    entries: AtomicU64,
    used_bytes: AtomicU64,
    retired_bytes: AtomicU64,
    retires_since_collect: AtomicU64,
    freed_blocks: AtomicU64,
    repairs: AtomicU64,
    recovered_blocks: AtomicU64,
}

/// The writer lock's words.
#[repr(C)]
#[derive(Debug)]
struct LockWords {
    /// The holder's process token, 0 when free.
    holder: AtomicU64,
    /// Non-zero while the heap may be inconsistent: set before a repair
    /// (a takeover, or a writer that failed half-way) and cleared once one
    /// finished, so whoever takes the lock next repairs first.
    needs_repair: AtomicU64,
}

/// One arena's table entry.
#[repr(C)]
#[derive(Debug)]
struct ArenaSlot {
    lease_id: AtomicU64,
    len: AtomicU64,
    bump: AtomicU64,
    reserved: AtomicU64,
}

/// One reader's pin (a cache line of its own).
#[repr(C, align(64))]
#[derive(Debug)]
struct PinSlot {
    /// Process token of the slot's holder; 0 when free.
    owner: AtomicU64,
    /// `epoch << 1 | 1` while pinned, 0 otherwise.
    word: AtomicU64,
}

/// The control block at the start of a map (see docs/LAYOUT.md); the
/// bucket heads follow it, then arena 0.
#[repr(C)]
#[derive(Debug)]
pub struct MapControl {
    params: MapParams,
    /// The writer lock.
    lock: Line<LockWords>,
    /// The global epoch (advanced under the writer lock).
    epoch: Line<AtomicU64>,
    heap: Line<Heap>,
    arenas: Line<[ArenaSlot; MAX_ARENAS]>,
    pins: [PinSlot; PIN_SLOTS],
}

/// Size of [`MapControl`].
#[cfg(not(loom))]
pub const CONTROL_SIZE: u64 = 11008;

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<MapParams>() == 128);
    assert!(size_of::<MapControl>() == CONTROL_SIZE as usize);
    assert!(offset_of!(MapControl, lock) == 128);
    assert!(offset_of!(MapControl, epoch) == 256);
    assert!(offset_of!(MapControl, heap) == 384);
    assert!(offset_of!(MapControl, arenas) == 768);
    assert!(offset_of!(MapControl, pins) == 2816);
};

fn zero() -> AtomicU64 {
    AtomicU64::new(0)
}

impl MapControl {
    /// A control block on the heap (models and tests; segments use
    /// `init_in_place`), with arena 0 of `arena0_len` bytes.
    pub fn new(params: MapParams, arena0_len: u64) -> MapControl {
        let ctrl = MapControl {
            params,
            lock: Line(LockWords {
                holder: zero(),
                needs_repair: zero(),
            }),
            epoch: Line(zero()),
            heap: Line(Heap {
                free: std::array::from_fn(|_| zero()),
                limbo_head: zero(),
                limbo_tail: zero(),
                arena_count: AtomicU64::new(1),
                entries: zero(),
                used_bytes: zero(),
                retired_bytes: zero(),
                retires_since_collect: zero(),
                freed_blocks: zero(),
                repairs: zero(),
                recovered_blocks: zero(),
            }),
            arenas: Line(std::array::from_fn(|_| ArenaSlot {
                lease_id: zero(),
                len: zero(),
                bump: zero(),
                reserved: zero(),
            })),
            pins: std::array::from_fn(|_| PinSlot {
                owner: zero(),
                word: zero(),
            }),
        };
        ctrl.arenas.0[0].len.store(arena0_len, Ordering::Relaxed);
        ctrl.arenas.0[0].bump.store(ARENA_START, Ordering::Relaxed);
        ctrl
    }

    /// Initialises a control block in zeroed memory nobody else uses yet,
    /// with arena 0 (of `arena0_len` bytes, zeroed) in lease `lease_id`.
    ///
    /// # Safety
    /// `ptr` is valid for writes of `CONTROL_SIZE` bytes, 128-aligned,
    /// zeroed, and not accessed by anyone else until this returns.
    #[cfg(not(loom))]
    pub unsafe fn init_in_place(
        ptr: *mut MapControl,
        params: MapParams,
        lease_id: u64,
        arena0_len: u64,
    ) {
        // SAFETY: exclusive, valid, aligned, zeroed memory per the caller;
        // zero is a valid atomic, so only these fields need writing.
        let ctrl = unsafe { &*ptr };
        ctrl.heap.0.arena_count.store(1, Ordering::Relaxed);
        let arena = &ctrl.arenas.0[0];
        arena.lease_id.store(lease_id, Ordering::Relaxed);
        arena.len.store(arena0_len, Ordering::Relaxed);
        arena.bump.store(ARENA_START, Ordering::Relaxed);
        // The parameters (with the magic) last: whoever sees the magic
        // after an Acquire fence sees the map set up.
        fence(Ordering::Release);
        // SAFETY: as above; `params` is a plain field nobody reads before
        // the magic is there.
        unsafe { std::ptr::addr_of_mut!((*ptr).params).write(params) };
    }

    /// Copies the parameters out (the copy is what gets validated).
    pub fn params(&self) -> MapParams {
        // SAFETY: `params` is a valid, aligned field; a volatile read copies
        // whatever is there and every bit pattern is a valid `MapParams`.
        unsafe { std::ptr::read_volatile(&self.params) }
    }
}

/// Where a map's arenas are, as the process running the algorithm maps them.
pub trait Arenas {
    /// The bytes of one arena.
    type Bytes: RingBytes;

    /// The bytes of arena `index`, which the map's table says is lease
    /// `lease_id` of `len` bytes (mapped on first use); `None` if it cannot
    /// be mapped.
    fn arena(&self, index: u32, lease_id: u64, len: u64) -> Option<&Self::Bytes>;

    /// A new arena `index` of at least `min_len` bytes, zeroed, for the
    /// writer holding the lock: its lease id and length; `None` if none
    /// can be had.
    fn grow(&self, index: u32, min_len: u64) -> Option<(u64, u64)>;
}

/// A map's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Entries reachable.
    pub entries: u64,
    /// Bytes of USED blocks (entries and blocks being written).
    pub used_bytes: u64,
    /// Bytes of RETIRED blocks waiting for readers to move on.
    pub retired_bytes: u64,
    /// Arenas.
    pub arenas: u64,
    /// Bytes of all arenas.
    pub arena_bytes: u64,
    /// The global epoch.
    pub epoch: u64,
    /// Blocks freed after their grace period.
    pub freed_blocks: u64,
    /// Times a dead writer's lock was taken over and the heap rebuilt.
    pub repairs: u64,
    /// USED blocks no chain reached, retired by repairs.
    pub recovered_blocks: u64,
}

/// What a heap check found (see [`Map::check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapCensus {
    /// Entries reachable from the buckets.
    pub reachable: u64,
    /// USED blocks.
    pub used_blocks: u64,
    /// Bytes of USED blocks.
    pub used_bytes: u64,
    /// RETIRED blocks.
    pub retired_blocks: u64,
    /// FREE blocks.
    pub free_blocks: u64,
}

/// What a repair did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapRepair {
    /// USED blocks that no chain reached, now retired.
    pub recovered_blocks: u64,
    /// Entries found.
    pub entries: u64,
}

/// A pinned pin slot: while it lives, nothing a reader can reach is reused.
pub struct Pin<'a> {
    word: &'a AtomicU64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        // Release: the reads made under the pin happen before a writer that
        // sees the slot unpinned (Acquire in `try_advance`) reuses memory.
        self.word.store(0, Ordering::Release);
    }
}

/// A pin slot held by a process: an index into the pin table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinSlotId(usize);

impl PinSlotId {
    /// The index.
    pub fn index(self) -> usize {
        self.0
    }

    /// The slot of index `index`, as [`PinSlotId::index`] gave it (the
    /// process must hold that slot).
    ///
    /// # Panics
    /// If `index` is not below [`PIN_SLOTS`].
    pub fn from_index(index: usize) -> PinSlotId {
        assert!(index < PIN_SLOTS, "pin slot index out of range");
        PinSlotId(index)
    }
}

/// A pin seen by [`Map::pins`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinSeen {
    /// Slot index.
    pub slot: usize,
    /// Holder's process token.
    pub owner: u64,
    /// The raw pin word (`epoch << 1 | 1`).
    pub word: u64,
    /// Whether it holds back the global epoch.
    pub blocking: bool,
}

/// The map algorithm bound to a control block, its buckets and its arenas.
pub struct Map<'a, B: RingBytes, A: Arenas> {
    ctrl: &'a MapControl,
    buckets: &'a B,
    arenas: &'a A,
    nbuckets: u64,
}

impl<B: RingBytes, A: Arenas> Clone for Map<'_, B, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: RingBytes, A: Arenas> Copy for Map<'_, B, A> {}

impl<'a, B: RingBytes, A: Arenas> Map<'a, B, A> {
    /// Binds the algorithm after validating the parameters against the
    /// bucket region.
    ///
    /// # Errors
    /// `Corrupt` if the magic, bucket count or region size is wrong.
    pub fn new(ctrl: &'a MapControl, buckets: &'a B, arenas: &'a A) -> Result<Self, MapError> {
        let params = ctrl.params();
        if params.magic != MAP_MAGIC {
            return Err(MapError::Corrupt("not a map (bad magic)"));
        }
        MapParams::new(params.buckets)?;
        if buckets.len() < params.buckets * 8 {
            return Err(MapError::Corrupt("bucket region too small"));
        }
        Ok(Map {
            ctrl,
            buckets,
            arenas,
            nbuckets: params.buckets,
        })
    }

    /// Number of buckets.
    pub fn buckets(&self) -> u64 {
        self.nbuckets
    }

    fn bucket_head(&self, bucket: u64) -> &'a AtomicU64 {
        debug_assert!(bucket < self.nbuckets);
        // SAFETY: bucket < nbuckets and the region holds nbuckets words
        // (checked in `new`); 8-aligned.
        unsafe { self.buckets.header(bucket * 8) }
    }

    /// The arena and offset a reference names, checked: the arena exists,
    /// the offset is block-aligned and the block (of the class its state
    /// word gives) lies inside the arena.
    fn block(&self, r: u64) -> Result<Block<'a, A::Bytes>, MapError> {
        self.block_in(r, false)
    }

    /// As `block`, for the lock holder when `locked` (see [`locked_load`]).
    fn block_in(&self, r: u64, locked: bool) -> Result<Block<'a, A::Bytes>, MapError> {
        let index = r >> OFFSET_BITS;
        let off = r & OFFSET_MASK;
        let count = self.ctrl.heap.0.arena_count.load(Ordering::Acquire);
        if index >= count.min(MAX_ARENAS as u64)
            || off < ARENA_START
            || !off.is_multiple_of(MIN_BLOCK)
        {
            return Err(MapError::Corrupt("block reference out of range"));
        }
        let slot = &self.ctrl.arenas.0[index as usize];
        let len = slot.len.load(Ordering::Relaxed);
        let bytes = self
            .arenas
            .arena(index as u32, slot.lease_id.load(Ordering::Relaxed), len)
            .ok_or(MapError::ArenaUnavailable {
                index: index as u32,
            })?;
        let len = len.min(bytes.len());
        if off + MIN_BLOCK > len {
            return Err(MapError::Corrupt("block reference past its arena"));
        }
        // SAFETY: off + 64 <= len and off is 64-aligned.
        let state_word = unsafe { bytes.header(off) };
        let state = BlockState::decode(if locked {
            locked_load(state_word)
        } else {
            state_word.load(Ordering::Relaxed)
        })?;
        let size = class_size(state.class);
        if off + size > len {
            return Err(MapError::Corrupt("block runs past its arena"));
        }
        Ok(Block {
            bytes,
            off,
            size,
            r,
        })
    }

    /// Claims a free pin slot for a process (`token`), clearing slots of
    /// dead holders if none is free.
    ///
    /// # Errors
    /// `TooManyReaders`.
    pub fn claim_pin_slot(
        &self,
        token: u64,
        is_dead: impl Fn(u64) -> bool,
    ) -> Result<PinSlotId, MapError> {
        assert_ne!(token, 0, "process tokens are non-zero");
        for attempt in 0..2 {
            for (i, slot) in self.ctrl.pins.iter().enumerate() {
                if slot
                    .owner
                    .compare_exchange(0, token, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(PinSlotId(i));
                }
            }
            if attempt == 0 {
                self.clear_dead_pins(&is_dead, token);
            }
        }
        Err(MapError::TooManyReaders)
    }

    /// Gives a pin slot back (it must not be pinned).
    pub fn release_pin_slot(&self, slot: PinSlotId, token: u64) {
        let slot = &self.ctrl.pins[slot.0];
        slot.word.store(0, Ordering::Release);
        let _ = slot
            .owner
            .compare_exchange(token, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Clears the pin slot of `dead` (a holder known dead) on behalf of
    /// `clearer`: the clearer first takes the slot over by CAS, so of two
    /// clearers only one touches the pin word, and never after the slot
    /// went to a new reader; a clearer that dies half-way leaves the slot
    /// to the next (it names a dead process). Whether this call cleared it.
    fn clear_pin(&self, slot: &PinSlot, dead: u64, clearer: u64) -> bool {
        if slot
            .owner
            .compare_exchange(dead, clearer, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        slot.word.store(0, Ordering::Release);
        slot.owner.store(0, Ordering::Release);
        true
    }

    /// Pins the current epoch in `slot` (held by this process, not pinned
    /// already).
    pub fn pin(&self, slot: PinSlotId) -> Pin<'a> {
        self.pin_in(slot, false)
    }

    /// As `pin`, for the lock holder when `locked` (see [`locked_load`]).
    fn pin_in(&self, slot: PinSlotId, locked: bool) -> Pin<'a> {
        let word = &self.ctrl.pins[slot.0].word;
        let epoch = if locked {
            locked_load(&self.ctrl.epoch.0)
        } else {
            self.ctrl.epoch.0.load(Ordering::Relaxed)
        };
        // Release (not Relaxed): a re-pin stays in the release sequence of
        // the unpin before it, so a writer that reads it (Acquire) sees
        // the reads made under the earlier pin as done.
        word.store((epoch << 1) | 1, Ordering::Release);
        // SeqCst: the store-buffering pair of `try_advance`'s fence: either
        // the advancer sees this pin, or this reader's loads after the
        // fence see every unlink made before the advancer's fence.
        let skip = mutant::active(Mutant::MapPinSkipFence)
            || (locked && mutant::active(Mutant::MapWriterSkipFences));
        if !skip {
            fence(Ordering::SeqCst);
        }
        Pin { word }
    }

    /// The pins held now (for the supervisor's watch and tests).
    pub fn pins(&self) -> Vec<PinSeen> {
        let epoch = self.ctrl.epoch.0.load(Ordering::Acquire);
        self.ctrl
            .pins
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| {
                let word = p.word.load(Ordering::Acquire);
                (word & 1 == 1).then(|| PinSeen {
                    slot,
                    owner: p.owner.load(Ordering::Acquire),
                    word,
                    blocking: word >> 1 != epoch,
                })
            })
            .collect()
    }

    /// Copies the value of `key` into `out` (replacing its contents);
    /// whether the key was found.
    ///
    /// # Errors
    /// `BadKey`, `ArenaUnavailable`, `Corrupt`.
    pub fn get_into(
        &self,
        _pin: &Pin<'_>,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, MapError> {
        check_key(key)?;
        crash::point(CrashPoint::MapReaderPinned);
        let hash = hash_key(key);
        let mut cur = self
            .bucket_head(hash % self.nbuckets)
            .load(Ordering::Acquire);
        let mut steps = 0u64;
        let mut fields = [0u8; 16];
        while cur != 0 {
            steps += 1;
            self.check_steps(steps)?;
            let block = self.block(cur)?;
            crash::point(CrashPoint::MapReaderAtEntry);
            block.read(HASH, &mut fields)?;
            let (h, key_len, val_len) = decode_fields(&fields);
            if h == hash && key_len == key.len() as u64 && block.holds_key(key)? {
                block.read_value(key_len, val_len, usize::MAX, out)?;
                return Ok(true);
            }
            cur = block.next().load(Ordering::Acquire);
        }
        Ok(false)
    }

    /// Calls `f` with the key of every entry of `bucket` (under `pin`).
    ///
    /// # Errors
    /// `ArenaUnavailable`, `Corrupt`.
    pub fn keys_in_bucket(
        &self,
        _pin: &Pin<'_>,
        bucket: u64,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), MapError> {
        if bucket >= self.nbuckets {
            return Ok(());
        }
        let mut cur = self.bucket_head(bucket).load(Ordering::Acquire);
        let mut steps = 0u64;
        let mut fields = [0u8; 16];
        let mut key = Vec::new();
        while cur != 0 {
            steps += 1;
            self.check_steps(steps)?;
            let block = self.block(cur)?;
            block.read(HASH, &mut fields)?;
            let (_, key_len, _) = decode_fields(&fields);
            if key_len > MAX_KEY_LEN {
                return Err(MapError::Corrupt("key length out of range"));
            }
            key.resize(key_len as usize, 0);
            block.read(KEY, &mut key)?;
            f(&key);
            cur = block.next().load(Ordering::Acquire);
        }
        Ok(())
    }

    /// Takes the writer lock for `token` (a live holder is waited for until
    /// `deadline`; a dead one's lock is taken over and the heap repaired),
    /// pinning `slot` for the writer's own reads.
    ///
    /// # Errors
    /// `Busy` past the deadline; `Corrupt` if a repair finds the map
    /// inconsistent.
    pub fn lock(
        &self,
        token: u64,
        slot: PinSlotId,
        is_dead: fn(u64) -> bool,
        deadline: Option<Instant>,
    ) -> Result<Writer<'a, B, A>, MapError> {
        assert_ne!(token, 0, "process tokens are non-zero");
        let lock = &self.ctrl.lock.0.holder;
        let mut spins = 0u32;
        loop {
            let current = lock.load(Ordering::Relaxed);
            if current == 0 {
                // Acquire: see everything the previous holder wrote.
                if lock
                    .compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.acquired(token, slot, is_dead).map(|(w, _)| w);
                }
                continue;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(DEAD_CHECK_EVERY) {
                if current != token && is_dead(current) {
                    if lock
                        .compare_exchange(current, token, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.ctrl.lock.0.needs_repair.store(1, Ordering::Relaxed);
                        return self.acquired(token, slot, is_dead).map(|(w, _)| w);
                    }
                    continue;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(MapError::Busy { holder: current });
                }
            }
            backoff(spins);
        }
    }

    /// The writer for a lock just taken: it repairs first if the heap
    /// needs it (an error drops the writer, which unlocks and leaves the
    /// repair to the next holder).
    fn acquired(
        &self,
        token: u64,
        slot: PinSlotId,
        is_dead: fn(u64) -> bool,
    ) -> Result<(Writer<'a, B, A>, Option<MapRepair>), MapError> {
        let writer = Writer {
            map: *self,
            token,
            slot,
            pin: Some(self.pin_in(slot, true)),
            is_dead,
        };
        let repaired = if self.ctrl.lock.0.needs_repair.load(Ordering::Relaxed) != 0 {
            Some(writer.repair()?)
        } else {
            None
        };
        Ok((writer, repaired))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MapStats {
        let h = &self.ctrl.heap.0;
        let arenas = h.arena_count.load(Ordering::Acquire).min(MAX_ARENAS as u64);
        MapStats {
            entries: h.entries.load(Ordering::Relaxed),
            used_bytes: h.used_bytes.load(Ordering::Relaxed),
            retired_bytes: h.retired_bytes.load(Ordering::Relaxed),
            arenas,
            arena_bytes: (0..arenas as usize)
                .map(|i| self.ctrl.arenas.0[i].len.load(Ordering::Relaxed))
                .fold(0, u64::saturating_add),
            epoch: self.ctrl.epoch.0.load(Ordering::Relaxed),
            freed_blocks: h.freed_blocks.load(Ordering::Relaxed),
            repairs: h.repairs.load(Ordering::Relaxed),
            recovered_blocks: h.recovered_blocks.load(Ordering::Relaxed),
        }
    }

    /// The arenas' lease ids and lengths, arena 0 first.
    pub fn arena_table(&self) -> Vec<(u64, u64)> {
        let count = self.ctrl.heap.0.arena_count.load(Ordering::Acquire);
        self.ctrl.arenas.0[..count.min(MAX_ARENAS as u64) as usize]
            .iter()
            .map(|a| {
                (
                    a.lease_id.load(Ordering::Relaxed),
                    a.len.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The arenas' lease ids (arena 0 first; 0 for an arena without one).
    pub fn arena_leases(&self) -> Vec<u64> {
        self.arena_table().into_iter().map(|(id, _)| id).collect()
    }

    /// The process token holding the writer lock (0 if none).
    pub fn lock_holder(&self) -> u64 {
        self.ctrl.lock.0.holder.load(Ordering::Acquire)
    }

    /// Takes over the writer lock from `dead` (a holder known dead) and
    /// repairs; `Ok(None)` if the lock is not `dead`'s any more.
    ///
    /// # Errors
    /// `Corrupt`.
    pub fn take_over(
        &self,
        dead: u64,
        token: u64,
        slot: PinSlotId,
        is_dead: fn(u64) -> bool,
    ) -> Result<Option<MapRepair>, MapError> {
        let lock = &self.ctrl.lock.0.holder;
        if dead == 0
            || lock
                .compare_exchange(dead, token, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return Ok(None);
        }
        self.ctrl.lock.0.needs_repair.store(1, Ordering::Relaxed);
        let (_writer, repaired) = self.acquired(token, slot, is_dead)?;
        Ok(repaired)
    }

    /// Clears the pin slots of dead holders; how many.
    pub fn clear_dead_pins(&self, is_dead: impl Fn(u64) -> bool, clearer: u64) -> u64 {
        let mut cleared = 0;
        for slot in &self.ctrl.pins {
            let owner = slot.owner.load(Ordering::Acquire);
            if owner != 0
                && owner != clearer
                && is_dead(owner)
                && self.clear_pin(slot, owner, clearer)
            {
                cleared += 1;
            }
        }
        cleared
    }

    /// Blocks the arenas could hold at most: a chain longer than this
    /// loops.
    fn max_blocks(&self) -> u64 {
        (self.stats().arena_bytes / MIN_BLOCK + 1).min(MAX_WALK)
    }

    /// Errs once a walk of `steps` hops must have looped.
    fn check_steps(&self, steps: u64) -> Result<(), MapError> {
        if steps.is_multiple_of(1024) && steps > self.max_blocks() {
            return Err(MapError::Corrupt("bucket chain does not end"));
        }
        Ok(())
    }
}

/// Longest chain walked, whatever a (scribbled) arena table claims.
const MAX_WALK: u64 = 1 << 32;
/// Spins between checks whether the lock holder is dead.
#[cfg(not(loom))]
const DEAD_CHECK_EVERY: u32 = 4096;
#[cfg(loom)]
const DEAD_CHECK_EVERY: u32 = 1;

fn backoff(spins: u32) {
    #[cfg(not(loom))]
    if spins > 256 {
        std::thread::yield_now();
        return;
    }
    let _ = spins;
    crate::sync::spin_loop();
}

fn check_key(key: &[u8]) -> Result<(), MapError> {
    if key.is_empty() || key.len() as u64 > MAX_KEY_LEN {
        return Err(MapError::BadKey {
            len: key.len() as u64,
        });
    }
    Ok(())
}

fn decode_fields(fields: &[u8; 16]) -> (u64, u64, u64) {
    let word = |i: usize| u64::from_le_bytes(fields[i..i + 8].try_into().expect("8 bytes"));
    let lens = word(8);
    (word(0), lens & 0xFFFF_FFFF, lens >> 32)
}

/// The link word pointing at an entry, and the entry.
type Found<'a, R> = (&'a AtomicU64, Block<'a, R>);

/// A checked block of an arena.
struct Block<'a, R: RingBytes> {
    bytes: &'a R,
    off: u64,
    size: u64,
    r: u64,
}

impl<R: RingBytes> Block<'_, R> {
    fn word(&self, at: u64) -> &AtomicU64 {
        debug_assert!(at < ENTRY_OVERHEAD);
        // SAFETY: the block (off..off + size, size >= 64) lies inside the
        // arena (checked when the block was made) and `at` is 0, 8 or 16.
        unsafe { self.bytes.header(self.off + at) }
    }

    fn state(&self) -> &AtomicU64 {
        self.word(0)
    }

    fn link(&self) -> &AtomicU64 {
        self.word(8)
    }

    fn next(&self) -> &AtomicU64 {
        self.word(NEXT)
    }

    /// Copies bytes at `at` of the block, bounds-checked against the block.
    fn read(&self, at: u64, dst: &mut [u8]) -> Result<(), MapError> {
        if at + dst.len() as u64 > self.size {
            return Err(MapError::Corrupt("entry length runs past its block"));
        }
        // SAFETY: in bounds of the block, itself inside the arena; a
        // published entry's bytes are not written while a pinned reader can
        // reach it (the reclamation rule).
        unsafe { self.bytes.read(self.off + at, dst) };
        Ok(())
    }

    /// Copies the first `limit` bytes (at most) of the entry's value (of
    /// `val_len` bytes after a key of `key_len`) into `out`, once the
    /// lengths are known to fit the block.
    fn read_value(
        &self,
        key_len: u64,
        val_len: u64,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MapError> {
        if KEY + key_len + val_len > self.size {
            return Err(MapError::Corrupt("value length runs past its block"));
        }
        out.resize((val_len as usize).min(limit), 0);
        self.read(KEY + key_len, out)
    }

    /// Whether the block's key (whose length the caller checked) is `key`,
    /// compared a piece at a time without allocating.
    fn holds_key(&self, key: &[u8]) -> Result<bool, MapError> {
        let mut piece = [0u8; 128];
        let mut at = KEY;
        for chunk in key.chunks(piece.len()) {
            let stored = &mut piece[..chunk.len()];
            self.read(at, stored)?;
            if stored != chunk {
                return Ok(false);
            }
            at += chunk.len() as u64;
        }
        Ok(true)
    }

    /// Writes bytes at `at` of a block the writer owns.
    fn write(&self, at: u64, src: &[u8]) {
        assert!(at + src.len() as u64 <= self.size, "entry fits its block");
        // SAFETY: in bounds (asserted); the block is USED by the lock
        // holder and not yet reachable, so nobody else accesses it.
        unsafe { self.bytes.write(self.off + at, src) };
    }
}

/// The writer lock, held: inserts, overwrites, deletes and reclamation.
/// Dropping it unlocks, except while panicking (a writer that fails
/// half-way is treated as a dead one: the next holder repairs).
pub struct Writer<'a, B: RingBytes, A: Arenas> {
    map: Map<'a, B, A>,
    token: u64,
    slot: PinSlotId,
    pin: Option<Pin<'a>>,
    is_dead: fn(u64) -> bool,
}

impl<B: RingBytes, A: Arenas> Drop for Writer<'_, B, A> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Failed half-way: the next holder repairs first.
            self.map
                .ctrl
                .lock
                .0
                .needs_repair
                .store(1, Ordering::Relaxed);
        }
        self.pin = None;
        // Release: the next holder (Acquire) sees all this holder wrote.
        let _ = self.map.ctrl.lock.0.holder.compare_exchange(
            self.token,
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

impl<'a, B: RingBytes, A: Arenas> Writer<'a, B, A> {
    fn heap(&self) -> &'a Heap {
        &self.map.ctrl.heap.0
    }

    /// Stores `value` under `key`; whether it replaced a value.
    ///
    /// # Errors
    /// `BadKey`, `TooLarge`, `OutOfMemory`, `ArenaUnavailable`, `Corrupt`.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<bool, MapError> {
        self.insert_parts(key, &[value])
    }

    /// Stores the concatenation of `parts` under `key` (no intermediate
    /// copy); whether it replaced a value.
    ///
    /// # Errors
    /// As [`Writer::insert`].
    pub fn insert_parts(&mut self, key: &[u8], parts: &[&[u8]]) -> Result<bool, MapError> {
        check_key(key)?;
        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        let needed = ENTRY_OVERHEAD + key.len() as u64 + value_len as u64;
        let class = class_for(needed).ok_or(MapError::TooLarge {
            needed,
            max: MAX_BLOCK.min(class_size(CLASSES as u8 - 1)),
        })?;
        let hash = hash_key(key);
        // Found first: nothing below may fail once a block is allocated
        // (an error then would leave it USED and unlinked until a repair).
        let head = self.map.bucket_head(hash % self.map.nbuckets);
        let found = self.find(head, hash, key)?;
        let block = self.alloc(class)?;
        crash::point(CrashPoint::MapAfterAlloc);
        let mut fields = [0u8; 16];
        fields[..8].copy_from_slice(&hash.to_le_bytes());
        fields[8..]
            .copy_from_slice(&((key.len() as u64) | ((value_len as u64) << 32)).to_le_bytes());
        block.write(HASH, &fields);
        block.write(KEY, key);
        let mut at = KEY + key.len() as u64;
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                // Half of the last part written: the mid-write window.
                let (first, rest) = part.split_at(part.len() / 2);
                block.write(at, first);
                crash::point(CrashPoint::MapMidWrite);
                block.write(at + first.len() as u64, rest);
            } else {
                block.write(at, part);
            }
            at += part.len() as u64;
        }
        let publish = order(Ordering::Release, Mutant::MapLinkRelaxed, Ordering::Relaxed);
        let replaced = match found {
            Some((pred, old)) => {
                let succ = locked_load(old.next());
                block.next().store(succ, Ordering::Relaxed);
                if mutant::active(Mutant::MapOverwriteUnlinkFirst) {
                    pred.store(succ, Ordering::Release);
                }
                pred.store(block.r, publish);
                crash::point(CrashPoint::MapAfterLink);
                self.retire(&old);
                true
            }
            None => {
                block.next().store(locked_load(head), Ordering::Relaxed);
                head.store(block.r, publish);
                crash::point(CrashPoint::MapAfterLink);
                self.heap().entries.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        self.maybe_collect();
        Ok(replaced)
    }

    /// Copies the first `limit` bytes (at most) of the value of `key` into
    /// `out`, under the lock (what an insert or remove right after would
    /// replace); whether it was there.
    ///
    /// # Errors
    /// `BadKey`, `ArenaUnavailable`, `Corrupt`.
    pub fn get_prefix_into(
        &self,
        key: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, MapError> {
        check_key(key)?;
        let hash = hash_key(key);
        let head = self.map.bucket_head(hash % self.map.nbuckets);
        let Some((_, block)) = self.find(head, hash, key)? else {
            return Ok(false);
        };
        let mut fields = [0u8; 16];
        block.read(HASH, &mut fields)?;
        let (_, key_len, val_len) = decode_fields(&fields);
        block.read_value(key_len, val_len, limit, out)?;
        Ok(true)
    }

    /// Removes `key`; whether it was there.
    ///
    /// # Errors
    /// `BadKey`, `ArenaUnavailable`, `Corrupt`.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool, MapError> {
        check_key(key)?;
        let hash = hash_key(key);
        let head = self.map.bucket_head(hash % self.map.nbuckets);
        let Some((pred, old)) = self.find(head, hash, key)? else {
            return Ok(false);
        };
        let succ = if mutant::active(Mutant::MapUnlinkDropsTail) {
            0
        } else {
            locked_load(old.next())
        };
        pred.store(succ, Ordering::Release);
        crash::point(CrashPoint::MapAfterUnlink);
        self.retire(&old);
        self.heap().entries.fetch_sub(1, Ordering::Relaxed);
        self.maybe_collect();
        Ok(true)
    }

    /// The link word pointing at `key`'s entry and the entry, if present.
    fn find(
        &self,
        head: &'a AtomicU64,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<Found<'a, A::Bytes>>, MapError> {
        let mut pred = head;
        let mut cur = locked_load(head);
        let mut steps = 0u64;
        let mut fields = [0u8; 16];
        while cur != 0 {
            steps += 1;
            self.map.check_steps(steps)?;
            let block = self.map.block_in(cur, true)?;
            block.read(HASH, &mut fields)?;
            let (h, key_len, _) = decode_fields(&fields);
            if h == hash && key_len == key.len() as u64 && block.holds_key(key)? {
                return Ok(Some((pred, block)));
            }
            cur = locked_load(block.next());
            // The block lives in a mapping the `Arenas` keeps for the
            // map's life, so its `next` word can stand as the predecessor.
            pred = word_of(block);
        }
        Ok(None)
    }

    /// A USED block of `class`: from its free list, the last arena's
    /// unused end, reclaimed limbo, or a new arena.
    fn alloc(&mut self, class: u8) -> Result<Block<'a, A::Bytes>, MapError> {
        if let Some(block) = self.pop_free(class)? {
            return Ok(block);
        }
        if let Some(block) = self.bump(class)? {
            return Ok(block);
        }
        // Two advances free what was retired at the current epoch; readers
        // pinning all the time may hold an advance back for a moment, so a
        // few more tries come before a new arena.
        for attempt in 0..COLLECT_TRIES {
            if attempt >= 2 {
                backoff(attempt);
            }
            self.collect();
            if let Some(block) = self.pop_free(class)? {
                return Ok(block);
            }
        }
        self.grow(class)?;
        self.bump(class)?.ok_or(MapError::OutOfMemory {
            needed: class_size(class),
        })
    }

    fn pop_free(&mut self, class: u8) -> Result<Option<Block<'a, A::Bytes>>, MapError> {
        let head = &self.heap().free[usize::from(class)];
        let r = locked_load(head);
        if r == 0 {
            return Ok(None);
        }
        let block = self.map.block_in(r, true)?;
        let state = BlockState::decode(locked_load(block.state()))?;
        if state.tag != Tag::Free || state.class != class {
            return Err(MapError::Corrupt("free list holds a block not free"));
        }
        let next = block.link().load(Ordering::Relaxed);
        block.state().store(
            BlockState {
                tag: Tag::Used,
                class,
                epoch: 0,
            }
            .word(),
            Ordering::Relaxed,
        );
        head.store(next, Ordering::Relaxed);
        self.heap()
            .used_bytes
            .fetch_add(block.size, Ordering::Relaxed);
        Ok(Some(block))
    }

    fn bump(&mut self, class: u8) -> Result<Option<Block<'a, A::Bytes>>, MapError> {
        let count = self.heap().arena_count.load(Ordering::Relaxed);
        if count == 0 || count > MAX_ARENAS as u64 {
            return Err(MapError::Corrupt("arena count out of range"));
        }
        let index = count - 1;
        let slot = &self.map.ctrl.arenas.0[index as usize];
        let size = class_size(class);
        let at = slot.bump.load(Ordering::Relaxed);
        let len = slot.len.load(Ordering::Relaxed);
        if at < ARENA_START || !at.is_multiple_of(MIN_BLOCK) || at > len || at > OFFSET_MASK {
            return Err(MapError::Corrupt("arena bump out of range"));
        }
        if len - at < size {
            return Ok(None);
        }
        let bytes = self
            .map
            .arenas
            .arena(index as u32, slot.lease_id.load(Ordering::Relaxed), len)
            .ok_or(MapError::ArenaUnavailable {
                index: index as u32,
            })?;
        if bytes.len() < at + size {
            return Err(MapError::Corrupt("arena shorter than its table entry"));
        }
        // SAFETY: at + size <= arena length, at 64-aligned; the bytes past
        // the bump belong to the lock holder.
        unsafe {
            bytes.header(at + 8).store(0, Ordering::Relaxed);
            bytes.header(at).store(
                BlockState {
                    tag: Tag::Used,
                    class,
                    epoch: 0,
                }
                .word(),
                Ordering::Relaxed,
            );
        }
        // The state is written before the bump moves past it, so a repair
        // walking up to the bump never meets an unwritten header.
        slot.bump.store(at + size, Ordering::Release);
        self.heap().used_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Some(Block {
            bytes,
            off: at,
            size,
            r: (index << OFFSET_BITS) | at,
        }))
    }

    fn grow(&mut self, class: u8) -> Result<(), MapError> {
        let needed = class_size(class);
        let count = self.heap().arena_count.load(Ordering::Relaxed);
        if count >= MAX_ARENAS as u64 {
            return Err(MapError::OutOfMemory { needed });
        }
        let last = self.map.ctrl.arenas.0[count as usize - 1]
            .len
            .load(Ordering::Relaxed);
        let min_len = (ARENA_START + needed)
            .max(last.saturating_mul(2))
            .min(OFFSET_MASK);
        let (lease_id, len) = self
            .map
            .arenas
            .grow(count as u32, min_len)
            .ok_or(MapError::OutOfMemory { needed })?;
        let slot = &self.map.ctrl.arenas.0[count as usize];
        slot.lease_id.store(lease_id, Ordering::Relaxed);
        slot.len.store(len.min(OFFSET_MASK), Ordering::Relaxed);
        slot.bump.store(ARENA_START, Ordering::Relaxed);
        // Release: a reader that sees the count sees the table entry.
        self.heap().arena_count.store(count + 1, Ordering::Release);
        Ok(())
    }

    /// Marks an unlinked block RETIRED at the current epoch and appends it
    /// to limbo.
    fn retire(&mut self, block: &Block<'a, A::Bytes>) {
        let state = BlockState::decode(locked_load(block.state())).map_or(0, |s| s.class);
        // SeqCst (as crossbeam seals a bag): the epoch read here is not
        // older than any a reader that could still reach the block pinned.
        if !mutant::active(Mutant::MapWriterSkipFences) {
            fence(Ordering::SeqCst);
        }
        let epoch = locked_load(&self.map.ctrl.epoch.0);
        block.link().store(0, Ordering::Relaxed);
        block.state().store(
            BlockState {
                tag: Tag::Retired,
                class: state,
                epoch,
            }
            .word(),
            Ordering::Relaxed,
        );
        let heap = self.heap();
        let tail = heap.limbo_tail.load(Ordering::Relaxed);
        match (tail != 0)
            .then(|| self.map.block_in(tail, true))
            .transpose()
        {
            Ok(Some(last)) => last.link().store(block.r, Ordering::Relaxed),
            // A bad tail is repaired by the next rebuild; start afresh.
            Ok(None) | Err(_) => heap.limbo_head.store(block.r, Ordering::Relaxed),
        }
        heap.limbo_tail.store(block.r, Ordering::Relaxed);
        heap.used_bytes.fetch_sub(block.size, Ordering::Relaxed);
        heap.retired_bytes.fetch_add(block.size, Ordering::Relaxed);
        heap.retires_since_collect.fetch_add(1, Ordering::Relaxed);
    }

    fn maybe_collect(&mut self) {
        if self.heap().retires_since_collect.load(Ordering::Relaxed) >= COLLECT_EVERY {
            self.collect();
        }
    }

    /// Advances the epoch if every pinned reader is at it, then frees the
    /// limbo blocks whose grace period is over. Returns blocks freed.
    pub fn collect(&mut self) -> u64 {
        self.heap()
            .retires_since_collect
            .store(0, Ordering::Relaxed);
        // Re-pin at the current epoch so this writer's own pin does not
        // hold the advance back.
        self.pin = None;
        self.pin = Some(self.map.pin_in(self.slot, true));
        self.try_advance();
        let epoch = locked_load(&self.map.ctrl.epoch.0);
        let heap = self.heap();
        let mut freed = 0;
        loop {
            let r = heap.limbo_head.load(Ordering::Relaxed);
            if r == 0 {
                break;
            }
            let Ok(block) = self.map.block_in(r, true) else {
                break;
            };
            let Ok(state) = BlockState::decode(locked_load(block.state())) else {
                break;
            };
            let grace = mutant::active(Mutant::MapReclaimIgnoresPins)
                || epoch.wrapping_sub(state.epoch) & EPOCH_MASK >= 2;
            if state.tag != Tag::Retired || !grace {
                break;
            }
            let next = block.link().load(Ordering::Relaxed);
            heap.limbo_head.store(next, Ordering::Relaxed);
            if next == 0 {
                heap.limbo_tail.store(0, Ordering::Relaxed);
            }
            crash::point(CrashPoint::MapMidCollect);
            self.push_free(&block, state.class);
            heap.retired_bytes.fetch_sub(block.size, Ordering::Relaxed);
            freed += 1;
        }
        heap.freed_blocks.fetch_add(freed, Ordering::Relaxed);
        freed
    }

    fn push_free(&self, block: &Block<'a, A::Bytes>, class: u8) {
        let head = &self.heap().free[usize::from(class)];
        block.link().store(locked_load(head), Ordering::Relaxed);
        block.state().store(
            BlockState {
                tag: Tag::Free,
                class,
                epoch: 0,
            }
            .word(),
            Ordering::Relaxed,
        );
        head.store(block.r, Ordering::Relaxed);
    }

    /// Advances the global epoch by one if no slot is pinned at an older
    /// one; a pin of a dead process in the way is cleared. Whether it
    /// advanced.
    fn try_advance(&self) -> bool {
        let ctrl = self.map.ctrl;
        let epoch = locked_load(&ctrl.epoch.0);
        // SeqCst: pairs with the fence in `pin` (store buffering): a reader
        // pinned after this fence sees every unlink made before it. (The
        // re-pin just before in `collect` fences too; either suffices.)
        if !mutant::active(Mutant::MapWriterSkipFences) {
            fence(Ordering::SeqCst);
        }
        if !mutant::active(Mutant::MapReclaimIgnoresPins) {
            for slot in &ctrl.pins {
                // Acquire: a reader's unpin (Release) happens before this
                // writer reuses anything that reader could see.
                let word = slot.word.load(Ordering::Acquire);
                if word & 1 == 1 && word >> 1 != epoch {
                    let owner = slot.owner.load(Ordering::Acquire);
                    if owner != self.token
                        && owner != 0
                        && (self.is_dead)(owner)
                        && self.map.clear_pin(slot, owner, self.token)
                    {
                        continue;
                    }
                    return false;
                }
            }
        }
        ctrl.epoch.0.store(epoch + 1, Ordering::Release);
        true
    }

    /// Frees everything in limbo that can be: collects until nothing more
    /// comes free (a few epochs when no reader is pinned). Returns blocks
    /// freed.
    pub fn reclaim(&mut self) -> u64 {
        let mut freed = 0;
        for _ in 0..3 {
            freed += self.collect();
        }
        freed
    }

    /// Rebuilds the allocator from the block states and the bucket chains
    /// (after a dead writer; idempotent): USED blocks no chain reaches are
    /// retired, free lists and limbo rebuilt, counters recomputed.
    ///
    /// # Errors
    /// `Corrupt` or `ArenaUnavailable`: the map cannot be walked.
    pub fn repair(&self) -> Result<MapRepair, MapError> {
        // Until this finishes the heap may be half rebuilt: a failure
        // leaves the repair to the next holder.
        self.map
            .ctrl
            .lock
            .0
            .needs_repair
            .store(1, Ordering::Relaxed);
        let reachable = self.reachable()?;
        let heap = self.heap();
        let epoch = locked_load(&self.map.ctrl.epoch.0);
        let mut free: [Vec<u64>; CLASSES] = std::array::from_fn(|_| Vec::new());
        let mut limbo: Vec<(u64, u64)> = Vec::new();
        let (mut used, mut retired, mut recovered) = (0u64, 0u64, 0u64);
        self.walk_blocks(|block, state| {
            let mut state = state;
            if reachable.contains(&block.r) {
                if state.tag != Tag::Used {
                    state = BlockState {
                        tag: Tag::Used,
                        epoch: 0,
                        ..state
                    };
                    block.state().store(state.word(), Ordering::Relaxed);
                }
            } else if state.tag == Tag::Used {
                state = BlockState {
                    tag: Tag::Retired,
                    epoch,
                    ..state
                };
                block.state().store(state.word(), Ordering::Relaxed);
                recovered += 1;
            }
            match state.tag {
                Tag::Used => used += block.size,
                Tag::Retired => {
                    retired += block.size;
                    limbo.push((state.epoch, block.r));
                }
                Tag::Free => free[usize::from(state.class)].push(block.r),
            }
        })?;
        for (class, blocks) in free.iter().enumerate() {
            let mut head = 0;
            for &r in blocks.iter().rev() {
                self.map
                    .block_in(r, true)?
                    .link()
                    .store(head, Ordering::Relaxed);
                head = r;
            }
            heap.free[class].store(head, Ordering::Relaxed);
        }
        // Oldest first: collection frees from the head while the grace
        // period is over. Epochs are compared relative to the current one.
        limbo.sort_by_key(|&(e, _)| std::cmp::Reverse(epoch.wrapping_sub(e) & EPOCH_MASK));
        let mut head = 0;
        for &(_, r) in limbo.iter().rev() {
            self.map
                .block_in(r, true)?
                .link()
                .store(head, Ordering::Relaxed);
            head = r;
        }
        heap.limbo_head.store(head, Ordering::Relaxed);
        heap.limbo_tail
            .store(limbo.last().map_or(0, |&(_, r)| r), Ordering::Relaxed);
        heap.used_bytes.store(used, Ordering::Relaxed);
        heap.retired_bytes.store(retired, Ordering::Relaxed);
        heap.entries
            .store(reachable.len() as u64, Ordering::Relaxed);
        heap.repairs.fetch_add(1, Ordering::Relaxed);
        heap.recovered_blocks
            .fetch_add(recovered, Ordering::Relaxed);
        self.map
            .ctrl
            .lock
            .0
            .needs_repair
            .store(0, Ordering::Relaxed);
        Ok(MapRepair {
            recovered_blocks: recovered,
            entries: reachable.len() as u64,
        })
    }

    /// Counts blocks by state and checks that exactly the reachable blocks
    /// are USED (no leak, no reachable block freed).
    ///
    /// # Errors
    /// `Corrupt` when the check fails or the map cannot be walked.
    pub fn check(&self) -> Result<HeapCensus, MapError> {
        let reachable = self.reachable()?;
        let mut census = HeapCensus {
            reachable: reachable.len() as u64,
            ..HeapCensus::default()
        };
        let mut bad = None;
        self.walk_blocks(|block, state| match state.tag {
            Tag::Used => {
                census.used_blocks += 1;
                census.used_bytes += block.size;
                if !reachable.contains(&block.r) {
                    bad = Some("a USED block no chain reaches (leaked)");
                }
            }
            Tag::Retired | Tag::Free => {
                if state.tag == Tag::Retired {
                    census.retired_blocks += 1;
                } else {
                    census.free_blocks += 1;
                }
                if reachable.contains(&block.r) {
                    bad = Some("a reachable block is not USED");
                }
            }
        })?;
        match bad {
            Some(what) => Err(MapError::Corrupt(what)),
            None => Ok(census),
        }
    }

    fn reachable(&self) -> Result<HashSet<u64>, MapError> {
        let mut seen = HashSet::new();
        for bucket in 0..self.map.nbuckets {
            let mut cur = locked_load(self.map.bucket_head(bucket));
            while cur != 0 {
                if !seen.insert(cur) {
                    return Err(MapError::Corrupt("bucket chains share or loop"));
                }
                cur = locked_load(self.map.block_in(cur, true)?.next());
            }
        }
        Ok(seen)
    }

    fn walk_blocks(
        &self,
        mut f: impl FnMut(&Block<'a, A::Bytes>, BlockState),
    ) -> Result<(), MapError> {
        let count = self.heap().arena_count.load(Ordering::Relaxed);
        if count == 0 || count > MAX_ARENAS as u64 {
            return Err(MapError::Corrupt("arena count out of range"));
        }
        for index in 0..count {
            let slot = &self.map.ctrl.arenas.0[index as usize];
            let bump = slot.bump.load(Ordering::Relaxed);
            let mut at = ARENA_START;
            while at < bump {
                let block = self.map.block_in((index << OFFSET_BITS) | at, true)?;
                let state = BlockState::decode(locked_load(block.state()))?;
                f(&block, state);
                at += block.size;
            }
            if at != bump {
                return Err(MapError::Corrupt("arena blocks do not end at its bump"));
            }
        }
        Ok(())
    }
}

/// Loads a word that readers load too, for the writer holding the lock.
/// Only lock holders store such words, so a plain load reads the latest
/// value. Under loom it is a read-modify-write of zero instead: loom's
/// DPOR keeps one last access per atomic, so a writer's plain load after
/// a reader's would hide the reader's access from the writer's next store,
/// and the interleavings between them would go unexplored.
#[inline]
fn locked_load(word: &AtomicU64) -> u64 {
    #[cfg(loom)]
    return word.fetch_add(0, Ordering::Relaxed);
    #[cfg(not(loom))]
    word.load(Ordering::Relaxed)
}

/// Retires per collection attempt.
const COLLECT_EVERY: u64 = 32;
/// Collections an allocation tries before adding an arena.
#[cfg(not(loom))]
const COLLECT_TRIES: u32 = 16;
#[cfg(loom)]
const COLLECT_TRIES: u32 = 2;

/// The `next` word of a block, borrowed for as long as the arenas are.
fn word_of<R: RingBytes>(block: Block<'_, R>) -> &AtomicU64 {
    // SAFETY: as `Block::word`: off + 16 + 8 <= off + size, inside the arena.
    unsafe { block.bytes.header(block.off + NEXT) }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::{HeapArenas, HeapMap, HeapRing};

    const ME: u64 = 7;
    const OTHER: u64 = 9;

    fn alive(_: u64) -> bool {
        false
    }

    fn dead(token: u64) -> bool {
        token != ME
    }

    struct Handle<'a> {
        map: Map<'a, HeapRing, HeapArenas>,
        slot: PinSlotId,
    }

    impl<'a> Handle<'a> {
        fn new(heap: &'a HeapMap, token: u64) -> Handle<'a> {
            let map = heap.map();
            let slot = map.claim_pin_slot(token, alive).unwrap();
            Handle { map, slot }
        }

        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            let pin = self.map.pin(self.slot);
            let mut out = Vec::new();
            self.map
                .get_into(&pin, key, &mut out)
                .unwrap()
                .then_some(out)
        }

        fn writer(&self) -> Writer<'a, HeapRing, HeapArenas> {
            self.map.lock(ME, self.slot, dead, None).unwrap()
        }
    }

    fn value(i: u64, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    #[test]
    fn insert_get_overwrite_remove() {
        let heap = HeapMap::new(4, &[4096]);
        let h = Handle::new(&heap, ME);
        assert_eq!(h.get(b"a"), None);
        let mut w = h.writer();
        assert!(!w.insert(b"a", b"one").unwrap());
        assert!(!w.insert(b"b", b"two").unwrap());
        assert!(w.insert(b"a", b"three").unwrap());
        drop(w);
        assert_eq!(h.get(b"a").as_deref(), Some(&b"three"[..]));
        assert_eq!(h.get(b"b").as_deref(), Some(&b"two"[..]));
        let mut w = h.writer();
        assert!(w.remove(b"a").unwrap());
        assert!(!w.remove(b"a").unwrap());
        drop(w);
        assert_eq!(h.get(b"a"), None);
        assert_eq!(h.map.stats().entries, 1);
        assert!(matches!(
            h.writer().insert(b"", b"x"),
            Err(MapError::BadKey { len: 0 })
        ));
    }

    #[test]
    fn arenas_are_added_as_the_map_fills_and_memory_is_reused() {
        let heap = HeapMap::new(16, &[8192, 16384, 32768, 65536]);
        let h = Handle::new(&heap, ME);
        for i in 0..200u64 {
            h.writer()
                .insert(format!("k{i}").as_bytes(), &value(i, 100))
                .unwrap();
        }
        let stats = h.map.stats();
        assert!(stats.arenas > 1, "{stats:?}");
        for i in 0..200u64 {
            assert_eq!(h.get(format!("k{i}").as_bytes()), Some(value(i, 100)));
        }
        // Overwrites in a steady state reuse retired blocks: after a
        // warm-up (room for what waits out its grace period), no growth.
        let overwrite = |round: u64| {
            let mut w = h.writer();
            for i in 0..200u64 {
                w.insert(format!("k{i}").as_bytes(), &value(i + round, 100))
                    .unwrap();
            }
        };
        overwrite(100);
        overwrite(101);
        let arena_bytes = h.map.stats().arena_bytes;
        for round in 0..20u64 {
            let mut w = h.writer();
            for i in 0..200u64 {
                w.insert(format!("k{i}").as_bytes(), &value(i + round, 100))
                    .unwrap();
            }
        }
        assert_eq!(h.map.stats().arena_bytes, arena_bytes);
        let mut w = h.writer();
        for i in 0..200u64 {
            assert!(w.remove(format!("k{i}").as_bytes()).unwrap());
        }
        w.reclaim();
        let census = w.check().unwrap();
        assert_eq!((census.used_blocks, census.retired_blocks), (0, 0));
        drop(w);
        let stats = h.map.stats();
        assert_eq!(
            (stats.entries, stats.used_bytes, stats.retired_bytes),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_pinned_reader_holds_back_reuse_until_it_unpins() {
        let heap = HeapMap::new(1, &[64 * 4]);
        let h = Handle::new(&heap, ME);
        let reader = heap.map().claim_pin_slot(OTHER, alive).unwrap();
        h.writer().insert(b"k", b"old").unwrap();
        let pin = heap.map().pin(reader);
        // OTHER is alive to this writer.
        let mut w = h.map.lock(ME, h.slot, alive, None).unwrap();
        assert!(w.remove(b"k").unwrap());
        w.reclaim();
        // The arena has room for three blocks: one retired and held back
        // by the pin, two fresh; the fourth put finds nothing to reuse.
        w.insert(b"x", b"1").unwrap();
        w.insert(b"y", b"2").unwrap();
        assert!(matches!(
            w.insert(b"z", b"3"),
            Err(MapError::OutOfMemory { .. })
        ));
        drop(w);
        drop(pin);
        let mut w = h.map.lock(ME, h.slot, alive, None).unwrap();
        w.insert(b"z", b"3").unwrap();
        assert_eq!(w.check().unwrap().used_blocks, 3);
    }

    #[test]
    fn a_dead_readers_pin_is_cleared_by_the_writer() {
        let heap = HeapMap::new(1, &[64 * 3]);
        let h = Handle::new(&heap, ME);
        let reader = heap.map().claim_pin_slot(OTHER, alive).unwrap();
        h.writer().insert(b"k", b"old").unwrap();
        let pin = heap.map().pin(reader);
        std::mem::forget(pin);
        let mut w = h.writer();
        w.remove(b"k").unwrap();
        w.insert(b"a", b"1").unwrap();
        // OTHER is dead to this writer: its pin is cleared, the block reused.
        w.insert(b"b", b"2").unwrap();
        drop(w);
        assert!(h.map.pins().is_empty());
    }

    #[test]
    fn a_lock_held_by_the_dead_is_taken_over_and_the_heap_rebuilt() {
        let heap = HeapMap::new(2, &[4096]);
        let h = Handle::new(&heap, ME);
        h.writer().insert(b"keep", b"v").unwrap();
        h.writer().insert(b"gone", b"v").unwrap();
        // A writer of another process allocates a block, unlinks an entry
        // and dies holding the lock before retiring or linking anything.
        let map = heap.map();
        let slot = map.claim_pin_slot(OTHER, alive).unwrap();
        let mut w = map.lock(OTHER, slot, alive, None).unwrap();
        let orphan = w.alloc(0).unwrap();
        let head = map.bucket_head(hash_key(b"gone") % 2);
        let (pred, old) = w.find(head, hash_key(b"gone"), b"gone").unwrap().unwrap();
        pred.store(old.next().load(Ordering::Relaxed), Ordering::Release);
        std::mem::forget(w);
        assert_eq!(map.lock_holder(), OTHER);
        assert!(matches!(
            map.lock(ME, h.slot, alive, Some(Instant::now())),
            Err(MapError::Busy { holder: OTHER })
        ));
        let mut w = h.writer();
        assert_eq!(map.stats().recovered_blocks, 2);
        assert_eq!(map.stats().entries, 1);
        let _ = orphan;
        w.reclaim();
        let census = w.check().unwrap();
        assert_eq!(
            (
                census.used_blocks,
                census.retired_blocks,
                census.free_blocks
            ),
            (1, 0, 2)
        );
        drop(w);
        assert_eq!(h.get(b"keep").as_deref(), Some(&b"v"[..]));
        assert_eq!(h.get(b"gone"), None);
    }

    #[test]
    fn scribbled_maps_give_errors_not_panics() {
        let heap = HeapMap::new(1, &[4096]);
        let h = Handle::new(&heap, ME);
        h.writer().insert(b"k", b"v").unwrap();
        let head = heap.map().bucket_head(0);
        let good = head.load(Ordering::Relaxed);
        let pin = h.map.pin(h.slot);
        let mut out = Vec::new();
        for bad in [1u64, 63, 1 << 40, u64::MAX, good + 4096] {
            head.store(bad, Ordering::Relaxed);
            assert!(matches!(
                h.map.get_into(&pin, b"k", &mut out),
                Err(MapError::Corrupt(_))
            ));
        }
        // A block that points at itself: the walk ends with an error.
        head.store(good, Ordering::Relaxed);
        let block = h.map.block(good).unwrap();
        block.next().store(good, Ordering::Relaxed);
        assert!(matches!(
            h.map.get_into(&pin, b"other", &mut out),
            Err(MapError::Corrupt(_))
        ));
        // Huge lengths are refused before anything is allocated.
        block.next().store(0, Ordering::Relaxed);
        block.write(HASH + 8, &(1u64 | (u64::MAX << 32)).to_le_bytes());
        assert!(matches!(
            h.map.get_into(&pin, b"k", &mut out),
            Err(MapError::Corrupt(_))
        ));
    }

    #[test]
    fn threads_read_whole_values_while_one_writes() {
        // Room for everything written: readers preempted while pinned (three
        // threads on two cores) may hold reuse back for a while.
        let heap = HeapMap::new(8, &[1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21]);
        let map = heap.map();
        let done = std::sync::atomic::AtomicBool::new(false);
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let h = Handle::new(&heap, OTHER);
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        for i in 0..16u64 {
                            if let Some(v) = h.get(format!("k{i}").as_bytes()) {
                                let first = v[0];
                                assert!(v.iter().all(|b| *b == first), "torn value");
                                assert_eq!(v.len(), 64 + first as usize);
                            }
                        }
                    }
                });
            }
            let _done = Done(&done);
            let h = Handle::new(&heap, ME);
            for round in 0..3000u64 {
                let mut w = h.map.lock(ME, h.slot, alive, None).unwrap();
                let i = round % 16;
                let byte = (round % 200) as u8;
                if round % 7 == 0 {
                    w.remove(format!("k{i}").as_bytes()).unwrap();
                } else {
                    w.insert(format!("k{i}").as_bytes(), &vec![byte; 64 + byte as usize])
                        .unwrap();
                }
            }
        });
        let slot = map.claim_pin_slot(ME, alive).unwrap();
        let mut w = map.lock(ME, slot, dead, None).unwrap();
        w.reclaim();
        w.check().unwrap();
    }

    /// Arenas whose arena 1 can be made unavailable.
    struct Flaky<'h> {
        inner: &'h HeapArenas,
        fail1: std::cell::Cell<bool>,
    }

    impl<'h> Flaky<'h> {
        fn new(inner: &'h HeapArenas) -> Flaky<'h> {
            Flaky {
                inner,
                fail1: std::cell::Cell::new(false),
            }
        }
    }

    /// Inserts `k0..k<n>` into a map whose arena 0 holds one block, then
    /// removes `k0` and reclaims: a free block waits in arena 0 and the
    /// chain runs through arena 1.
    fn fill_then_free_first(w: &mut Writer<'_, HeapRing, Flaky<'_>>, n: u8) {
        for i in 0..n {
            w.insert(&[b'k', i], b"v").unwrap();
        }
        w.remove(&[b'k', 0]).unwrap();
        w.reclaim();
    }

    impl Arenas for Flaky<'_> {
        type Bytes = HeapRing;

        fn arena(&self, index: u32, lease: u64, len: u64) -> Option<&HeapRing> {
            if index == 1 && self.fail1.get() {
                return None;
            }
            self.inner.arena(index, lease, len)
        }

        fn grow(&self, index: u32, min_len: u64) -> Option<(u64, u64)> {
            self.inner.grow(index, min_len)
        }
    }

    #[test]
    fn a_late_clearer_leaves_a_new_readers_pin_alone() {
        const DEAD: u64 = 99;
        const CLEARER_A: u64 = 21;
        const CLEARER_B: u64 = 22;
        let heap = HeapMap::new(1, &[64 * 3]);
        let map = heap.map();
        let ws = map.claim_pin_slot(ME, alive).unwrap();
        map.lock(ME, ws, alive, None)
            .unwrap()
            .insert(b"k", b"old")
            .unwrap();
        let dead_slot = map.claim_pin_slot(DEAD, alive).unwrap();
        std::mem::forget(map.pin(dead_slot));
        let reader_pin = std::cell::Cell::new(None);
        let first = std::cell::Cell::new(true);
        // Clearer A judges DEAD dead; meanwhile clearer B clears the slot
        // and reader OTHER claims it and pins. A must then do nothing.
        map.clear_dead_pins(
            |owner| {
                if owner == DEAD && first.replace(false) {
                    map.clear_dead_pins(|o| o == DEAD, CLEARER_B);
                    let slot = map.claim_pin_slot(OTHER, alive).unwrap();
                    assert_eq!(slot, dead_slot);
                    reader_pin.set(Some(map.pin(slot)));
                }
                owner == DEAD
            },
            CLEARER_A,
        );
        let pin = reader_pin.take().expect("the reader pinned");
        let mut out = Vec::new();
        assert!(map.get_into(&pin, b"k", &mut out).unwrap());
        let mut w = map.lock(ME, ws, alive, None).unwrap();
        w.remove(b"k").unwrap();
        w.insert(b"a", b"1").unwrap();
        // The arena holds two blocks; the third put needs k's, which the
        // reader's pin still protects.
        assert!(matches!(
            w.insert(b"b", b"2"),
            Err(MapError::OutOfMemory { .. })
        ));
        drop(w);
        drop(pin);
    }

    #[test]
    fn a_failed_repair_is_retried_by_the_next_holder() {
        const DEAD: u64 = 99;
        let heap = HeapMap::new(1, &[64 * 2, 4096]);
        let arenas = Flaky::new(&heap.arenas);
        let map = Map::new(&heap.ctrl, &heap.buckets, &arenas).unwrap();
        let ws = map.claim_pin_slot(ME, alive).unwrap();
        fill_then_free_first(&mut map.lock(ME, ws, alive, None).unwrap(), 4);
        // A writer pops a free block (now USED) and dies before moving the
        // free-list head.
        let ds = map.claim_pin_slot(DEAD, alive).unwrap();
        let w = map.lock(DEAD, ds, alive, None).unwrap();
        let r = heap.ctrl.heap.0.free[0].load(Ordering::Relaxed);
        assert_ne!(r, 0);
        map.block(r).unwrap().state().store(
            BlockState {
                tag: Tag::Used,
                class: 0,
                epoch: 0,
            }
            .word(),
            Ordering::Relaxed,
        );
        std::mem::forget(w);
        // The taker cannot map arena 1 now: the repair fails ...
        arenas.fail1.set(true);
        assert!(map.lock(ME, ws, |t| t == DEAD, None).is_err());
        arenas.fail1.set(false);
        // ... and the next holder repairs before writing.
        let mut w = map.lock(ME, ws, |t| t == DEAD, None).unwrap();
        w.insert(b"z", b"1").unwrap();
        w.reclaim();
        w.check().unwrap();
    }

    #[test]
    fn an_insert_that_fails_leaks_nothing() {
        let heap = HeapMap::new(1, &[64 * 2, 4096]);
        let arenas = Flaky::new(&heap.arenas);
        let map = Map::new(&heap.ctrl, &heap.buckets, &arenas).unwrap();
        let ws = map.claim_pin_slot(ME, alive).unwrap();
        let mut w = map.lock(ME, ws, alive, None).unwrap();
        fill_then_free_first(&mut w, 3);
        // The chain runs through arena 1, which cannot be mapped now.
        arenas.fail1.set(true);
        assert!(matches!(
            w.insert(b"x", b"1"),
            Err(MapError::ArenaUnavailable { index: 1 })
        ));
        arenas.fail1.set(false);
        w.check().unwrap();
    }

    #[test]
    fn a_scribbled_arena_length_still_bounds_a_walk() {
        let heap = HeapMap::new(1, &[4096]);
        let h = Handle::new(&heap, ME);
        h.writer().insert(b"k", b"v").unwrap();
        let good = h.map.bucket_head(0).load(Ordering::Relaxed);
        h.map
            .block(good)
            .unwrap()
            .next()
            .store(good, Ordering::Relaxed);
        heap.ctrl.arenas.0[0]
            .len
            .store(u64::MAX / 4, Ordering::Relaxed);
        assert!(h.map.max_blocks() <= MAX_WALK);
        assert_eq!(h.map.stats().arena_bytes, u64::MAX / 4);
    }
}

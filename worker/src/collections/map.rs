//! [`FabricHashMap`]: a byte-keyed hash map in leased shared memory that
//! any process of the instance can open by lease id.
//!
//! The algorithm is `grafos_shm_layout::map`: lock-free reads that copy
//! out under an epoch pin, one writer at a time, arenas added as leases
//! when it fills, memory reused only after every reader that could see it
//! moved on, and a writer killed at any instruction repaired by whoever
//! takes its lock over (or by the supervisor after the death).
//!
//! ```no_run
//! use grafos_worker::collections::map::FabricHashMap;
//! # fn main() -> grafos_worker::Result<()> {
//! let map = FabricHashMap::new(256)?;
//! map.insert(b"user:1", b"alice")?;
//! assert_eq!(map.get(b"user:1")?.as_deref(), Some(&b"alice"[..]));
//! let other_process_opens = map.lease_id();
//! # let _ = other_process_opens; Ok(()) }
//! ```

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use grafos_shm_layout::edge::RingBytes;
use grafos_shm_layout::map::{
    self as layout, Arenas, CONTROL_SIZE, HeapCensus, MapControl, MapError, MapParams, MapRepair,
    MapStats, PinSlotId,
};

use crate::error::{FabricError, Result};
use crate::instance::InstancePaths;
use crate::instance::instance_from_env;
use crate::mapped::{Backing, MappedRing};
use crate::mem::{MemBuilder, MemLease};
use crate::process::{is_dead, me};
use crate::segment::Segment;
use grafos_shm_layout::header::Expect;

/// A mapped lease or segment, for `control_of`.
trait HasSegment {
    fn segment(&self) -> &Segment;
    fn len(&self) -> u64 {
        self.segment().body_len()
    }
}

impl HasSegment for MemLease {
    fn segment(&self) -> &Segment {
        MemLease::segment(self)
    }
}

impl HasSegment for Backing {
    fn segment(&self) -> &Segment {
        Backing::segment(self)
    }
}

/// Bytes of arena 0 unless set otherwise.
pub const DEFAULT_ARENA_BYTES: u64 = 1 << 20;
/// Lease TTL of a map's leases unless set otherwise (seconds).
pub const DEFAULT_LEASE_SECS: u64 = 3600;
/// `Inner::spare` when it holds no slot.
const NO_SLOT: usize = usize::MAX;
/// How long a writer waits for a live lock holder before `Busy`.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// How to make a [`FabricHashMap`].
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// The instance (default: `GRAFOS_INSTANCE`, else `default`).
    pub instance: String,
    /// Buckets (a hash width, not a capacity).
    pub buckets: u64,
    /// Bytes of the first arena; later arenas double.
    pub arena_bytes: u64,
    /// TTL of every lease the map takes (renew with [`FabricHashMap::renew`]
    /// or a `RenewalManager` over [`FabricHashMap::lease_ids`]).
    pub lease_secs: u64,
}

impl MapOptions {
    /// `buckets` buckets in the instance from the environment.
    pub fn new(buckets: u64) -> MapOptions {
        MapOptions {
            instance: instance_from_env(),
            buckets,
            arena_bytes: DEFAULT_ARENA_BYTES,
            lease_secs: DEFAULT_LEASE_SECS,
        }
    }
}

/// A hash map of byte keys to byte values in shared memory. Cheap to
/// clone (clones share one mapping); usable from any thread.
#[derive(Clone)]
pub struct FabricHashMap {
    inner: Arc<Inner>,
}

struct Inner {
    lease: Backing,
    ctrl: NonNull<MapControl>,
    buckets: MappedRing,
    arenas: LeaseArenas,
    /// A pin slot of this process not in use now, if any ([`NO_SLOT`]
    /// otherwise): the common case of one thread takes and gives it back
    /// with one swap each.
    spare: AtomicUsize,
    /// More pin slots this process holds and is not using now.
    slots: Mutex<Vec<PinSlotId>>,
}

// SAFETY: `ctrl` and the rings point into mappings that `lease` and the
// arenas' backings keep alive for `Inner`'s life; shared memory is only
// accessed through atomics and the map protocol (and immutable
// parameters); the leases are `Sync` (their deadlines are atomics) and the
// rest is atomics and mutexes, so sharing the handle across threads is
// sound.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl std::fmt::Debug for FabricHashMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricHashMap")
            .field("lease_id", &self.lease_id())
            .field("buckets", &self.buckets())
            .finish()
    }
}

/// Where a map's arenas are mapped in this process: arena 0 in the map's
/// own lease, the others in leases of their own, opened on first use.
pub(crate) struct LeaseArenas {
    instance: String,
    /// The map's own lease id, stamped into the first word of every arena
    /// lease it adds and checked when one is mapped: a scribbled arena
    /// table cannot point the map (or the supervisor's repair) at another
    /// lease.
    map_lease: u64,
    lease_secs: u64,
    /// Opens arenas' segments directly (the supervisor) instead of as
    /// leases; such a map cannot grow.
    direct: bool,
    arena0: MappedRing,
    extra: Vec<OnceLock<(Backing, MappedRing)>>,
    /// Why the last `arena` or `grow` failed (the layout reports only
    /// that it did).
    failure: Mutex<Option<FabricError>>,
}

impl LeaseArenas {
    fn fail(&self, error: FabricError) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn take_failure(&self) -> Option<FabricError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn ring_of(backing: &Backing, len: u64) -> MappedRing {
    MappedRing::new(backing.segment().body(), len.min(backing.len()))
}

impl LeaseArenas {
    /// Maps arena lease `lease_id` as this process may.
    fn open(&self, lease_id: u64) -> Result<Backing> {
        if !self.direct {
            return MemLease::open_in(&self.instance, lease_id).map(Backing::Lease);
        }
        let name = InstancePaths::new(&self.instance)?.lease_segment(lease_id);
        let segment = Segment::open(&name, &Expect::default())?;
        if segment.fields().lease_id != lease_id {
            return Err(FabricError::InvalidArgument(format!(
                "segment {name} belongs to lease {}, not {lease_id}",
                segment.fields().lease_id
            )));
        }
        Ok(Backing::Segment(segment))
    }
}

impl Arenas for LeaseArenas {
    type Bytes = MappedRing;

    fn arena(&self, index: u32, lease_id: u64, len: u64) -> Option<&MappedRing> {
        if index == 0 {
            return Some(&self.arena0);
        }
        let cell = self.extra.get(index as usize)?;
        if let Some((_, ring)) = cell.get() {
            return Some(ring);
        }
        match self.open(lease_id) {
            Ok(lease) => {
                let ring = ring_of(&lease, len);
                // SAFETY: the ring starts at the lease body (128-aligned)
                // and `then` runs only when it is at least 8 bytes long.
                let owner =
                    (ring.len() >= 8).then(|| unsafe { ring.header(0) }.load(Ordering::Acquire));
                if owner != Some(self.map_lease) {
                    self.fail(FabricError::InvalidArgument(format!(
                        "lease {lease_id} is not an arena of map {}",
                        self.map_lease
                    )));
                    return None;
                }
                // A racing thread may have set it first: use theirs.
                let _ = cell.set((lease, ring));
                cell.get().map(|(_, ring)| ring)
            }
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    fn grow(&self, index: u32, min_len: u64) -> Option<(u64, u64)> {
        if self.direct {
            return None;
        }
        let cell = self.extra.get(index as usize)?;
        let lease = MemBuilder::new()
            .instance(&self.instance)
            .min_bytes(min_len)
            .lease_secs(self.lease_secs)
            .acquire();
        match lease {
            Ok(lease) => {
                let granted = (lease.lease_id(), lease.len());
                let lease = Backing::Lease(lease);
                let ring = ring_of(&lease, granted.1);
                if ring.len() < layout::ARENA_START {
                    return None;
                }
                // SAFETY: the fresh lease is ours and at least 64 bytes; its
                // first word is never part of a block. Published with the
                // arena table entry (Release), so openers see it.
                unsafe { ring.header(0) }.store(self.map_lease, Ordering::Release);
                if let Err((lease, _)) = cell.set((lease, ring)) {
                    // Mapped by an earlier reader of a table entry a dead
                    // writer never published: that lease is stale.
                    if let Backing::Lease(lease) = lease {
                        let _ = lease.release();
                    }
                    self.fail(FabricError::InvalidArgument(format!(
                        "arena {index} is mapped already"
                    )));
                    return None;
                }
                Some(granted)
            }
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }
}

type LayoutMap<'a> = layout::Map<'a, MappedRing, LeaseArenas>;

impl FabricHashMap {
    /// A map of `buckets` buckets in the instance `GRAFOS_INSTANCE` names.
    ///
    /// # Errors
    /// `InvalidArgument` for a bucket count of 0 or over 2^24; lease errors
    /// (`NoBudget`, `Disconnected`, ...).
    pub fn new(buckets: u64) -> Result<FabricHashMap> {
        FabricHashMap::with_options(&MapOptions::new(buckets))
    }

    /// A map made as `options` say.
    ///
    /// # Errors
    /// As [`FabricHashMap::new`].
    pub fn with_options(options: &MapOptions) -> Result<FabricHashMap> {
        let params = MapParams::new(options.buckets).map_err(|_| {
            FabricError::InvalidArgument(format!(
                "{} buckets: a map has 1 to {} buckets",
                options.buckets,
                layout::MAX_BUCKETS
            ))
        })?;
        let mut params = params;
        // Arenas added later get the TTL the map was made with.
        params.reserved[0] = options.lease_secs;
        let arena0 = options.arena_bytes.max(4096);
        let lease = MemBuilder::new()
            .instance(&options.instance)
            .min_bytes(CONTROL_SIZE + params.buckets_len() + arena0)
            .lease_secs(options.lease_secs)
            .acquire()?;
        let ctrl = control_of(&lease)?;
        let arena0_len = lease.len() - CONTROL_SIZE - params.buckets_len();
        // SAFETY: the lease is fresh (zeroed, nobody else knows its id
        // yet) and holds CONTROL_SIZE bytes at its 128-aligned body start.
        unsafe { MapControl::init_in_place(ctrl.as_ptr(), params, lease.lease_id(), arena0_len) };
        FabricHashMap::from_backing(
            Backing::Lease(lease),
            &options.instance,
            options.lease_secs,
            false,
        )
    }

    /// Opens map `lease_id` of the instance `GRAFOS_INSTANCE` names.
    ///
    /// # Errors
    /// `UnknownLease`, `LeaseExpired`, `Layout` if the lease holds no map.
    pub fn open(lease_id: u64) -> Result<FabricHashMap> {
        FabricHashMap::open_in(&instance_from_env(), lease_id)
    }

    /// Opens map `lease_id` of `instance`.
    ///
    /// # Errors
    /// As [`FabricHashMap::open`].
    pub fn open_in(instance: &str, lease_id: u64) -> Result<FabricHashMap> {
        let lease = MemLease::open_in(instance, lease_id)?;
        lease.check()?;
        FabricHashMap::from_backing(Backing::Lease(lease), instance, 0, false)
    }

    /// For the supervisor, which owns the instance's leases: the map in a
    /// memory lease's `segment`, if it holds one (arenas are opened as
    /// segments, not leases; the handle can repair and inspect, not grow).
    ///
    /// # Errors
    /// `Layout` if the segment holds a map that fails validation.
    pub fn inspect(segment: Segment, instance: &str) -> Result<Option<FabricHashMap>> {
        let mut magic = [0u8; 8];
        if segment.body_len() < CONTROL_SIZE {
            return Ok(None);
        }
        // SAFETY: the body holds at least CONTROL_SIZE bytes; the first
        // word is the (immutable once written) magic.
        unsafe { std::ptr::copy_nonoverlapping(segment.body().as_ptr(), magic.as_mut_ptr(), 8) };
        if u64::from_le_bytes(magic) != layout::MAP_MAGIC {
            return Ok(None);
        }
        // Pairs with the Release fence before the magic was written: the
        // rest of the control block is set up.
        std::sync::atomic::fence(Ordering::Acquire);
        let lease_id = segment.fields().lease_id;
        let map = FabricHashMap::from_backing(Backing::Segment(segment), instance, 1, true)?;
        // A map names its own lease as arena 0's: a copy of a map's bytes
        // in another lease (a stored object, say) is not taken for one.
        let own = map.inner.checked()?.arena_leases().first() == Some(&lease_id);
        Ok(own.then_some(map))
    }

    /// Binds to the map in `lease` (made or opened), checking its layout;
    /// new arenas get `lease_secs`, or (0) the TTL the map was made with.
    fn from_backing(
        lease: Backing,
        instance: &str,
        lease_secs: u64,
        direct: bool,
    ) -> Result<FabricHashMap> {
        let ctrl = control_of(&lease)?;
        // SAFETY: in bounds (checked by `control_of`), aligned, mapped
        // while the lease lives; only atomics and a Pod copy are read.
        let params = unsafe { ctrl.as_ref() }.params();
        let corrupt = |what: &'static str| FabricError::Layout {
            name: lease.segment().name().to_string(),
            source: grafos_shm_layout::LayoutError::Corrupt(what),
        };
        if params.magic != layout::MAP_MAGIC {
            return Err(corrupt("the lease holds no map"));
        }
        let lease_secs = match (lease_secs, params.reserved[0]) {
            (0, 0) => DEFAULT_LEASE_SECS,
            (0, made_with) => made_with,
            (secs, _) => secs,
        };
        let params = MapParams::new(params.buckets).map_err(|_| corrupt("bucket count"))?;
        let buckets_at = CONTROL_SIZE;
        let arena0_at = buckets_at + params.buckets_len();
        if arena0_at + layout::ARENA_START > lease.len() {
            return Err(corrupt("lease too small for its buckets"));
        }
        let body = lease.segment().body();
        // SAFETY: both offsets are inside the body (checked above).
        let (buckets_ptr, arena0_ptr) = unsafe {
            (
                NonNull::new_unchecked(body.as_ptr().add(buckets_at as usize)),
                NonNull::new_unchecked(body.as_ptr().add(arena0_at as usize)),
            )
        };
        let arenas = LeaseArenas {
            instance: instance.to_string(),
            map_lease: lease.lease_id(),
            lease_secs,
            direct,
            arena0: MappedRing::new(arena0_ptr, lease.len() - arena0_at),
            extra: (0..layout::MAX_ARENAS).map(|_| OnceLock::new()).collect(),
            failure: Mutex::new(None),
        };
        let inner = Inner {
            buckets: MappedRing::new(buckets_ptr, params.buckets_len()),
            ctrl,
            arenas,
            lease,
            spare: AtomicUsize::new(NO_SLOT),
            slots: Mutex::new(Vec::new()),
        };
        inner.map().map_err(|e| inner.error(e))?;
        Ok(FabricHashMap {
            inner: Arc::new(inner),
        })
    }

    /// The control lease's id: what another process passes to `open`.
    pub fn lease_id(&self) -> u64 {
        self.inner.lease.lease_id()
    }

    /// The leases the map holds (its own first, then its arenas'): renew
    /// them all to keep the map.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `Layout`.
    pub fn lease_ids(&self) -> Result<Vec<u64>> {
        let map = self.inner.checked()?;
        let mut ids = map.arena_leases();
        match ids.first_mut() {
            Some(first) => *first = self.lease_id(),
            None => ids.push(self.lease_id()),
        }
        Ok(ids)
    }

    /// Moves the deadline of every lease of the map to `lease_secs` from
    /// now.
    ///
    /// # Errors
    /// The first renewal that failed (the others are still tried).
    pub fn renew(&self, lease_secs: u64) -> Result<()> {
        let Backing::Lease(own) = &self.inner.lease else {
            return Err(FabricError::InvalidArgument(
                "an inspecting handle holds no leases to renew".into(),
            ));
        };
        let mut first = own.renew(lease_secs).err();
        let map = self.inner.checked()?;
        let arenas = &self.inner.arenas;
        for (index, (id, len)) in map.arena_table().into_iter().enumerate().skip(1) {
            // Renewing takes a hold: map the arena (which opens its lease)
            // if this process has not yet.
            let slot = arenas
                .arena(index as u32, id, len)
                .and(arenas.extra[index].get());
            let renewed = match slot {
                Some((Backing::Lease(lease), _)) => lease.renew(lease_secs),
                Some((Backing::Segment(_), _)) | None => Err(arenas
                    .take_failure()
                    .unwrap_or(FabricError::UnknownLease(id))),
            };
            if let Err(e) = renewed {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The TTL (seconds) the map's new leases get: the one it was made
    /// with.
    pub fn lease_secs(&self) -> u64 {
        self.inner.arenas.lease_secs
    }

    /// Number of buckets.
    pub fn buckets(&self) -> u64 {
        // SAFETY: as in `from_lease`.
        unsafe { self.inner.ctrl.as_ref() }.params().buckets
    }

    /// The value of `key`, copied out; `None` if absent.
    ///
    /// # Errors
    /// `LeaseExpired`/`LeasePoisoned` once the map's lease ended;
    /// `InvalidArgument` for an empty or over-long key; `Layout` if the map
    /// is corrupt.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.get_into(key, &mut out)?.then_some(out))
    }

    /// Copies the value of `key` into `out` (reusing its allocation);
    /// whether it was there.
    ///
    /// # Errors
    /// As [`FabricHashMap::get`].
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let map = self.inner.checked()?;
        self.inner.with_slot(&map, |slot| {
            let pin = map.pin(slot);
            map.get_into(&pin, key, out)
        })
    }

    /// Stores `value` under `key`; whether it replaced a value.
    ///
    /// # Errors
    /// As [`FabricHashMap::get`], plus `NoBudget` when no arena can be
    /// added and `InvalidArgument` for an entry over 1 GiB.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.write(|w| w.insert(key, value))
    }

    /// Removes `key`; whether it was there.
    ///
    /// # Errors
    /// As [`FabricHashMap::get`].
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        self.write(|w| w.remove(key))
    }

    /// Runs `f` under the writer lock (the map's writers take turns;
    /// readers never wait).
    ///
    /// # Errors
    /// As `f`'s, plus `Map(Busy)` if a live process held the lock for
    /// longer than 30 s.
    pub(crate) fn write<R>(
        &self,
        f: impl FnOnce(&mut layout::Writer<'_, MappedRing, LeaseArenas>) -> Result<R, MapError>,
    ) -> Result<R> {
        let map = self.inner.checked()?;
        self.inner.with_slot(&map, |slot| {
            let deadline = Instant::now().checked_add(LOCK_PATIENCE);
            let mut writer = map.lock(me(), slot, is_dead, deadline)?;
            f(&mut writer)
        })
    }

    /// Calls `f` with every key of `bucket` (a snapshot per bucket: keys
    /// inserted or removed meanwhile may or may not appear).
    ///
    /// # Errors
    /// As [`FabricHashMap::get`].
    pub fn keys_in_bucket(&self, bucket: u64, f: impl FnMut(&[u8])) -> Result<()> {
        let map = self.inner.checked()?;
        self.inner.with_slot(&map, |slot| {
            let pin = map.pin(slot);
            map.keys_in_bucket(&pin, bucket, f)
        })
    }

    /// The map's counters.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `Layout`.
    pub fn stats(&self) -> Result<MapStats> {
        Ok(self.inner.checked()?.stats())
    }

    /// Frees every retired block whose readers moved on; blocks freed.
    ///
    /// # Errors
    /// As [`FabricHashMap::write`].
    pub fn reclaim(&self) -> Result<u64> {
        self.write(|w| Ok(w.reclaim()))
    }

    /// Counts blocks by state under the writer lock and checks that
    /// exactly the reachable ones are in use (no leak).
    ///
    /// # Errors
    /// `Map(Corrupt)` naming what is wrong; as [`FabricHashMap::write`].
    pub fn check(&self) -> Result<HeapCensus> {
        self.write(|w| w.check())
    }

    /// Repairs after dead processes: clears their pins, and if the writer
    /// lock names a dead process, takes it over and rebuilds the heap.
    /// What the rebuild did, if one ran.
    ///
    /// # Errors
    /// `Map(Corrupt)`; lease errors.
    pub fn repair_dead(&self) -> Result<Option<MapRepair>> {
        let map = self.inner.checked()?;
        map.clear_dead_pins(is_dead, me());
        let holder = map.lock_holder();
        if holder == 0 || holder == me() || !is_dead(holder) {
            return Ok(None);
        }
        self.inner
            .with_slot(&map, |slot| map.take_over(holder, me(), slot, is_dead))
    }

    /// The process token holding the writer lock (0 if none).
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `Layout`.
    pub fn lock_holder(&self) -> Result<u64> {
        Ok(self.inner.checked()?.lock_holder())
    }

    /// The pins held now (slot, holder, whether it holds reuse back).
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `Layout`.
    pub fn pins(&self) -> Result<Vec<layout::PinSeen>> {
        Ok(self.inner.checked()?.pins())
    }
}

impl Inner {
    fn map(&self) -> Result<LayoutMap<'_>, MapError> {
        // SAFETY: as in `from_lease`.
        let ctrl = unsafe { self.ctrl.as_ref() };
        layout::Map::new(ctrl, &self.buckets, &self.arenas)
    }

    /// The map, once the lease is known to be live.
    fn checked(&self) -> Result<LayoutMap<'_>> {
        self.lease.check()?;
        self.map().map_err(|e| self.error(e))
    }

    /// Runs `f` with a pin slot of this process (claimed on first need,
    /// kept for the next call).
    fn with_slot<R>(
        &self,
        map: &LayoutMap<'_>,
        f: impl FnOnce(PinSlotId) -> Result<R, MapError>,
    ) -> Result<R> {
        let slot = match self.spare.swap(NO_SLOT, Ordering::Acquire) {
            NO_SLOT => {
                let pooled = self.slots.lock().unwrap_or_else(|e| e.into_inner()).pop();
                match pooled {
                    Some(slot) => slot,
                    None => map
                        .claim_pin_slot(me(), is_dead)
                        .map_err(|e| self.error(e))?,
                }
            }
            index => PinSlotId::from_index(index),
        };
        // Given back even if `f` panics (a caller that catches panics
        // would otherwise lose the slot for the process's life).
        let _back = SlotBack { inner: self, slot };
        f(slot).map_err(|e| self.error(e))
    }

    /// A layout error as the caller should see it: the lease's own error
    /// when it ended, the arena's when one could not be had.
    fn error(&self, e: MapError) -> FabricError {
        if let Err(ended) = self.lease.check() {
            return ended;
        }
        match e {
            MapError::ArenaUnavailable { .. } | MapError::OutOfMemory { .. } => {
                self.arenas.take_failure().unwrap_or(FabricError::Map(e))
            }
            MapError::BadKey { .. } | MapError::TooLarge { .. } => {
                FabricError::InvalidArgument(e.to_string())
            }
            e => FabricError::Map(e),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut slots = std::mem::take(self.slots.get_mut().unwrap_or_else(|e| e.into_inner()));
        let spare = *self.spare.get_mut();
        if spare != NO_SLOT {
            slots.push(PinSlotId::from_index(spare));
        }
        if let Ok(map) = self.map() {
            for slot in slots {
                map.release_pin_slot(slot, me());
            }
        }
    }
}

/// Gives a pin slot back to its process's pool when dropped.
struct SlotBack<'a> {
    inner: &'a Inner,
    slot: PinSlotId,
}

impl Drop for SlotBack<'_> {
    fn drop(&mut self) {
        if self
            .inner
            .spare
            .compare_exchange(
                NO_SLOT,
                self.slot.index(),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            self.inner
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.slot);
        }
    }
}

/// The control block at the start of a lease, bounds- and
/// alignment-checked.
fn control_of(lease: &impl HasSegment) -> Result<NonNull<MapControl>> {
    let body = lease.segment().body();
    if lease.len() < CONTROL_SIZE || !(body.as_ptr() as usize).is_multiple_of(128) {
        return Err(FabricError::Layout {
            name: lease.segment().name().to_string(),
            source: grafos_shm_layout::LayoutError::TooSmall {
                size: lease.len(),
                needed: CONTROL_SIZE,
            },
        });
    }
    Ok(body.cast())
}

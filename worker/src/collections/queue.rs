//! The FabricQueue in shared memory: a bounded multi-producer
//! multi-consumer work queue whose claims survive their claimant's death.
//!
//! ```no_run
//! use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
//! use grafos_worker::segment::SegmentName;
//!
//! let name = SegmentName::new("default", "jobs")?;
//! let queue = FabricQueue::create(&name, &QueueConfig::new(1024, 256))?;
//! queue.try_push(b"job-1")?;
//!
//! // In another process: FabricQueue::open(&name)?
//! let job = queue.try_pop()?.expect("pushed");
//! assert_eq!(job, b"job-1");
//! # grafos_worker::segment::Segment::unlink(&name)?;
//! # Ok::<(), grafos_worker::FabricError>(())
//! ```
//!
//! Every handle is a registered participant with its own incarnation, the
//! owner of its claims. A handle is `Send` but not `Sync`: one thread uses
//! it at a time; [`FabricQueue::try_clone`] registers another for another
//! thread. A handle blocked behind a claim whose process died repairs that
//! claim itself (checking every [`LIVENESS_PERIOD`]), and every handle that
//! opens the queue first repairs the participants that died, so the queue
//! moves on without a supervisor.
//!
//! Pop is at-most-once: a record taken by a consumer that dies before
//! releasing it is dropped (and counted in `reads_repaired`). For
//! at-least-once delivery use an edge log.
//!
//! The algorithm lives in [`grafos_shm_layout::queue`]; this module maps
//! it onto a segment and adds blocking, loans, borrowing pops and typed
//! records.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use grafos_shm_layout::header::{Expect, SegmentKind, TypeDescriptor};
use grafos_shm_layout::queue::{
    Blocker, CONTROL_SIZE, Claim, ClaimSeen, Geometry, Incarnation, Participant, Queue,
    QueueControl, QueueCounters, QueueError, QueueParams, QueuePositions, RepairReport, Taken,
};

use crate::collections::Item;
use crate::error::{FabricError, Result};
use crate::futex::LinuxFutex;
use crate::mapped::{MappedRing, deadline};
use crate::mem::MemLease;
use crate::process::{is_dead, me};
use crate::segment::{Segment, SegmentName, SegmentSpec};

/// Yields before a blocking call spins and sleeps.
const WAIT_YIELDS: u32 = 8;
/// Spins (after yielding) before a blocking call registers and sleeps.
const WAIT_SPINS: u32 = 64;

/// How long a blocked call sleeps before it checks whether the claim it
/// waits behind belongs to a dead process.
pub const LIVENESS_PERIOD: Duration = Duration::from_millis(10);

/// Liveness periods between sweeps for every dead participant (about a
/// second of blocking).
const SWEEP_SLICES: u32 = 100;

/// How to create a queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Number of slots (1 to 2^32; a power of two is a little faster).
    pub capacity: u64,
    /// Largest record in bytes (1 B to 1 GiB); every slot has room for it.
    pub stride: u64,
    /// Records the queue carries, checked by openers that ask.
    pub payload: TypeDescriptor,
    /// The instance's token.
    pub instance_token: u64,
    /// The lease the segment belongs to (0 outside a pool).
    pub lease_id: u64,
}

impl QueueConfig {
    /// `capacity` slots of `stride` bytes, raw byte records.
    pub fn new(capacity: u64, stride: u64) -> QueueConfig {
        QueueConfig {
            capacity,
            stride,
            payload: TypeDescriptor::BYTES,
            instance_token: 0,
            lease_id: 0,
        }
    }
}

/// What [`FabricQueue::inspect`] reads.
#[derive(Clone, Copy, Debug)]
pub struct QueueSnapshot {
    /// Number of slots.
    pub capacity: u64,
    /// Largest record in bytes.
    pub stride: u64,
    /// Shared positions.
    pub positions: QueuePositions,
    /// Event counters.
    pub counters: QueueCounters,
    /// Participant entries in use (live handles, and dead ones not yet
    /// repaired).
    pub participants: usize,
}

struct Inner {
    segment: Segment,
    /// Where the control block starts in the segment's body (0 for a queue
    /// segment of its own).
    offset: u64,
    geo: Geometry,
    slots: MappedRing,
    /// The memory lease the queue is placed in, held while it is used.
    lease: Option<MemLease>,
}

// SAFETY: the raw pointer in `slots` points into `segment`'s mapping,
// shared memory meant for concurrent use through atomics and the queue
// protocol; `Inner` holds no thread-bound state.
unsafe impl Send for Inner {}
// SAFETY: as above; all shared mutation goes through atomics or through
// slots the protocol assigns to one claimant.
unsafe impl Sync for Inner {}

impl Inner {
    /// Validates a queue segment as a queue.
    fn bind(segment: Segment) -> Result<Inner> {
        Inner::bind_at(segment, SegmentKind::Queue, 0)
    }

    /// Validates the queue whose control block sits `offset` bytes into
    /// `segment`'s body (a segment of `kind`).
    fn bind_at(segment: Segment, kind: SegmentKind, offset: u64) -> Result<Inner> {
        let (base, slots_len) = segment.region_at(kind, offset, CONTROL_SIZE)?;
        // SAFETY: as in `ctrl`: `region_at` checked the block's bounds and
        // alignment.
        let ctrl = unsafe {
            &*segment
                .body()
                .as_ptr()
                .add(offset as usize)
                .cast::<QueueControl>()
        };
        let geo = Geometry::validate(&ctrl.params(), slots_len).map_err(|source| {
            FabricError::Layout {
                name: segment.name().to_string(),
                source,
            }
        })?;
        Ok(Inner {
            slots: MappedRing::new(base, geo.capacity * geo.slot_size),
            segment,
            offset,
            geo,
            lease: None,
        })
    }

    fn ctrl(&self) -> &QueueControl {
        // SAFETY: the body starts 256 bytes into a page-aligned mapping and
        // `offset` is 128-aligned, so the block is 128-aligned; it holds
        // CONTROL_SIZE bytes (both checked by `region_at` when bound);
        // QueueControl is atomics plus Pod params read by copy.
        unsafe {
            &*self
                .segment
                .body()
                .as_ptr()
                .add(self.offset as usize)
                .cast::<QueueControl>()
        }
    }

    fn queue(&self) -> Queue<'_, MappedRing> {
        Queue::with_geometry(self.ctrl(), &self.slots, self.geo)
    }

    /// Repairs every participant whose process is dead, unless another
    /// live process is repairing already.
    fn sweep(&self) -> Result<(), QueueError> {
        match self.queue().repair_dead(me(), is_dead, &LinuxFutex) {
            Ok(report) => {
                if report.incarnations > 0 {
                    tracing::info!(
                        queue = %self.segment.name(),
                        incarnations = report.incarnations,
                        claims = report.claims_tombed,
                        reads = report.reads_freed,
                        "repaired dead participants"
                    );
                }
                Ok(())
            }
            Err(QueueError::RepairBusy) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A handle on a FabricQueue: a registered participant that pushes and
/// pops. Dropping it unregisters it.
///
/// `T` is the item type of [`FabricQueue::push_item`] and
/// [`FabricQueue::pop_item`] (raw bytes unless said otherwise); every
/// other call works on byte records.
pub struct FabricQueue<T = Vec<u8>> {
    inner: Arc<Inner>,
    me: Participant,
    /// One thread at a time: the participant's waiter bit is not shared.
    _not_sync: PhantomData<Cell<()>>,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for FabricQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricQueue")
            .field("segment", &self.inner.segment)
            .field("geometry", &self.inner.geo)
            .field("participant", &self.me)
            .finish()
    }
}

impl FabricQueue {
    /// Creates a queue segment named `name` and registers with it.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad capacity or stride, and the errors of
    /// [`Segment::create`].
    pub fn create(name: &SegmentName, config: &QueueConfig) -> Result<FabricQueue> {
        let params = QueueParams::new(config.capacity, config.stride).map_err(|e| {
            FabricError::InvalidArgument(format!(
                "{e} (got capacity {}, stride {})",
                config.capacity, config.stride
            ))
        })?;
        let body_len = params
            .slots_len()
            .checked_add(CONTROL_SIZE)
            .ok_or_else(|| FabricError::InvalidArgument("queue size overflows".into()))?;
        let spec = SegmentSpec {
            kind: SegmentKind::Queue,
            body_len,
            lease_id: config.lease_id,
            instance_token: config.instance_token,
            payload: config.payload,
        };
        let segment = Segment::create(name, &spec)?;
        // SAFETY: the body is zeroed, 128-aligned, CONTROL_SIZE + slots
        // bytes long, and unpublished until `activate`.
        unsafe { QueueControl::init_in_place(segment.body().as_ptr().cast(), params) };
        segment.activate();
        FabricQueue::from_segment(segment)
    }

    /// Opens an existing queue, accepting any token and payload.
    ///
    /// # Errors
    /// See [`FabricQueue::open_with`].
    pub fn open(name: &SegmentName) -> Result<FabricQueue> {
        FabricQueue::open_with(name, &Expect::default())
    }

    /// Opens an existing queue, checking the token and payload `expect`
    /// names (its `kind` is always `Queue`).
    ///
    /// # Errors
    /// The errors of [`Segment::open`] and [`FabricQueue::from_segment`].
    pub fn open_with(name: &SegmentName, expect: &Expect) -> Result<FabricQueue> {
        let expect = Expect {
            kind: Some(SegmentKind::Queue),
            ..*expect
        };
        FabricQueue::from_segment(Segment::open(name, &expect)?)
    }

    /// Reads a queue's shape, positions and counters without registering
    /// as a participant (for status tools).
    ///
    /// # Errors
    /// `Layout` if it is not a consistent queue.
    pub fn inspect(segment: Segment) -> Result<QueueSnapshot> {
        let inner = Inner::bind(segment)?;
        let q = inner.queue();
        Ok(QueueSnapshot {
            capacity: inner.geo.capacity,
            stride: inner.geo.stride,
            positions: q.positions(),
            counters: q.counters(),
            participants: q.participants(),
        })
    }

    /// Repairs every participant of a queue segment whose process is dead,
    /// without registering with it (for supervisors and tools).
    ///
    /// # Errors
    /// `Layout` if it is not a consistent queue; `Queue(RepairBusy)` if a
    /// live process is repairing; `Queue(Corrupt)`.
    pub fn repair_dead_in(segment: Segment) -> Result<RepairReport> {
        let inner = Inner::bind(segment)?;
        Ok(inner.queue().repair_dead(me(), is_dead, &LinuxFutex)?)
    }

    /// A view of a queue segment that reads its claims without
    /// registering (for a supervisor's stuck-claimer watch, which keeps it
    /// mapped from scan to scan).
    ///
    /// # Errors
    /// `Layout` if it is not a consistent queue.
    pub fn inspector(segment: Segment) -> Result<QueueInspector> {
        Ok(QueueInspector(Inner::bind(segment)?))
    }

    /// Binds an opened (validated) segment as a queue and registers with it.
    ///
    /// # Errors
    /// `Layout` if it is not a consistent queue; `Queue(TooManyParticipants)`
    /// if every participant entry is held by a live process.
    pub fn from_segment(segment: Segment) -> Result<FabricQueue> {
        FabricQueue::attach(Arc::new(Inner::bind(segment)?))
    }
}

impl<T: Item> FabricQueue<T> {
    /// Creates a queue of `capacity` slots of `stride` bytes at the start
    /// of a memory lease the caller owns (just acquired, not yet shared),
    /// and registers with it; the queue holds the lease.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad capacity or stride or a lease too small
    /// (with the bytes needed); the lease's `LeaseExpired`/`LeasePoisoned`.
    pub fn new(lease: MemLease, capacity: u64, stride: u64) -> Result<FabricQueue<T>> {
        lease.check()?;
        let params = QueueParams::new(capacity, stride).map_err(|e| {
            FabricError::InvalidArgument(format!("{e} (got capacity {capacity}, stride {stride})"))
        })?;
        let needed = params.slots_len().saturating_add(CONTROL_SIZE);
        if needed > lease.len() {
            return Err(FabricError::InvalidArgument(format!(
                "a queue of {capacity} slots of {stride} bytes needs {needed} bytes; lease {} has {}",
                lease.lease_id(),
                lease.len()
            )));
        }
        let segment = lease.segment().clone();
        // SAFETY: `needed` bytes from the body's start lie in the mapping
        // (checked above); the caller owns the lease's bytes, so zeroing
        // them and setting up the control block races nobody; the body is
        // 128-aligned.
        unsafe {
            let start = segment.body().as_ptr();
            std::ptr::write_bytes(start, 0, needed as usize);
            QueueControl::init_in_place(start.cast(), params);
        }
        let mut inner = Inner::bind_at(segment, SegmentKind::Raw, 0)?;
        inner.lease = Some(lease);
        FabricQueue::attach(Arc::new(inner))
    }

    /// Pushes an item, sleeping while the queue is full.
    ///
    /// # Errors
    /// As [`FabricQueue::push`].
    pub fn push_item(&self, item: &T, timeout: Option<Duration>) -> Result<u64> {
        Ok(self.push(&item.to_bytes(), timeout)?)
    }

    /// Pops an item, sleeping until one arrives.
    ///
    /// # Errors
    /// `Codec` if it does not decode (the record is consumed), or the
    /// errors of [`FabricQueue::pop`].
    pub fn pop_item(&self, timeout: Option<Duration>) -> Result<T> {
        T::from_bytes(&self.pop(timeout)?)
    }
}

impl<I> FabricQueue<I> {
    fn attach(inner: Arc<Inner>) -> Result<FabricQueue<I>> {
        // Whoever comes in cleans up after whoever died: a restarted peer
        // repairs its dead predecessor's claims and registrations at once.
        inner.sweep()?;
        let me = inner.queue().attach(me(), is_dead, &LinuxFutex)?;
        Ok(FabricQueue {
            inner,
            me,
            _not_sync: PhantomData,
            _item: PhantomData,
        })
    }

    /// Another handle on the same mapping, registered as a participant of
    /// its own (for another thread).
    ///
    /// # Errors
    /// `Queue(TooManyParticipants)`.
    pub fn try_clone(&self) -> Result<FabricQueue<I>> {
        FabricQueue::attach(self.inner.clone())
    }

    /// The memory lease the queue was placed in by [`FabricQueue::new`],
    /// given back with the queue's offset in it, once this is the last
    /// handle and nothing was ever pushed: the caller may then put another
    /// structure there.
    ///
    /// # Errors
    /// `InvalidArgument` (with the queue handed back) if the queue is not
    /// in a lease, other handles share it, or records were pushed.
    pub fn into_unused_lease(self) -> std::result::Result<(MemLease, u64), (FabricError, Self)> {
        let refuse = |why: &str, queue| Err((FabricError::InvalidArgument(why.into()), queue));
        if self.inner.lease.is_none() {
            return refuse("the queue is not placed in a memory lease", self);
        }
        if Arc::strong_count(&self.inner) != 1 || self.queue().participants() != 1 {
            return refuse("other handles use the queue", self);
        }
        if self.positions().tail != 0 {
            return refuse("records were pushed to the queue", self);
        }
        let inner = Arc::clone(&self.inner);
        drop(self);
        let inner = Arc::into_inner(inner).expect("the last handle was dropped");
        let offset = inner.offset;
        Ok((inner.lease.expect("checked above"), offset))
    }

    fn queue(&self) -> Queue<'_, MappedRing> {
        self.inner.queue()
    }

    fn incarnation(&self) -> Incarnation {
        self.me.incarnation()
    }

    // ----- pushing -----

    /// Pushes a record if there is room; returns its position.
    ///
    /// # Errors
    /// `Full`, `TooLarge`, `Sealed`, `ClaimRepaired` or `Corrupt`.
    #[inline]
    pub fn try_push(&self, record: &[u8]) -> Result<u64, QueueError> {
        self.queue()
            .try_push(self.incarnation(), record, &LinuxFutex)
    }

    /// Pushes a record, sleeping while the queue is full, for at most
    /// `timeout` (`None`: no limit).
    ///
    /// # Errors
    /// `TimedOut`, `TooLarge`, `Sealed`, `ClaimRepaired` or `Corrupt`.
    pub fn push(&self, record: &[u8], timeout: Option<Duration>) -> Result<u64, QueueError> {
        let deadline = deadline(timeout);
        loop {
            match self.try_push(record) {
                Err(QueueError::Full) => self.wait(Side::Push, deadline)?,
                other => return other,
            }
        }
    }

    /// Claims a slot for a record of `len` bytes to be written in place
    /// (zero-copy); nothing is visible until [`QueueLoan::commit`].
    ///
    /// # Errors
    /// `Full`, `TooLarge`, `Sealed` or `Corrupt`.
    pub fn try_reserve(&self, len: usize) -> Result<QueueLoan<'_>, QueueError> {
        let claim = self
            .queue()
            .try_claim(self.incarnation(), len as u64, &LinuxFutex)?;
        Ok(QueueLoan {
            queue: &self.inner,
            claim: Some(claim),
        })
    }

    /// Like [`FabricQueue::try_reserve`], sleeping while the queue is full.
    ///
    /// # Errors
    /// `TimedOut`, `TooLarge`, `Sealed` or `Corrupt`.
    pub fn reserve(
        &self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<QueueLoan<'_>, QueueError> {
        let deadline = deadline(timeout);
        loop {
            match self.try_reserve(len) {
                Err(QueueError::Full) => self.wait(Side::Push, deadline)?,
                other => return other,
            }
        }
    }

    /// Pushes a `Pod` value as its bytes.
    ///
    /// # Errors
    /// As [`FabricQueue::try_push`].
    pub fn try_push_pod<T: Pod>(&self, value: &T) -> Result<u64, QueueError> {
        self.try_push(bytemuck::bytes_of(value))
    }

    /// Pushes a serde value encoded with postcard, sleeping while full.
    ///
    /// # Errors
    /// `Codec` if encoding fails, or the errors of [`FabricQueue::push`].
    pub fn push_serde<T: serde::Serialize>(
        &self,
        value: &T,
        timeout: Option<Duration>,
    ) -> Result<u64> {
        let bytes = postcard::to_allocvec(value).map_err(|e| FabricError::Codec(e.to_string()))?;
        Ok(self.push(&bytes, timeout)?)
    }

    // ----- popping -----

    /// Pops the record at the head if one is published (copied out).
    ///
    /// # Errors
    /// `Sealed` once sealed and drained; `ReadRepaired`; `Corrupt`.
    #[inline]
    pub fn try_pop(&self) -> Result<Option<Vec<u8>>, QueueError> {
        self.queue().try_pop(self.incarnation(), &LinuxFutex)
    }

    /// Pops a record, sleeping until one is published, for at most
    /// `timeout` (`None`: no limit).
    ///
    /// # Errors
    /// `TimedOut`, `Sealed`, `ReadRepaired` or `Corrupt`.
    pub fn pop(&self, timeout: Option<Duration>) -> Result<Vec<u8>, QueueError> {
        let deadline = deadline(timeout);
        loop {
            if let Some(record) = self.try_pop()? {
                return Ok(record);
            }
            self.wait(Side::Pop, deadline)?;
        }
    }

    /// Takes the record at the head in place (zero-copy): the slot stays
    /// claimed, and no producer reuses it, until the guard is dropped or
    /// [`PopGuard::finish`]ed.
    ///
    /// # Errors
    /// `Sealed` once sealed and drained; `Corrupt`.
    pub fn try_pop_ref(&self) -> Result<Option<PopGuard<'_>>, QueueError> {
        let taken = self.queue().try_take(self.incarnation(), &LinuxFutex)?;
        Ok(taken.map(|taken| PopGuard {
            queue: &self.inner,
            taken: Some(taken),
        }))
    }

    /// Like [`FabricQueue::try_pop_ref`], sleeping until a record is
    /// published, for at most `timeout`.
    ///
    /// # Errors
    /// `TimedOut`, `Sealed` or `Corrupt`.
    pub fn pop_ref(&self, timeout: Option<Duration>) -> Result<PopGuard<'_>, QueueError> {
        let deadline = deadline(timeout);
        loop {
            if let Some(guard) = self.try_pop_ref()? {
                return Ok(guard);
            }
            self.wait(Side::Pop, deadline)?;
        }
    }

    /// Pops a `Pod` value.
    ///
    /// # Errors
    /// `WrongSize` if the record's length is not `size_of::<T>()` (the
    /// record is consumed), or the errors of [`FabricQueue::try_pop_ref`].
    pub fn try_pop_pod<T: Pod>(&self) -> Result<Option<T>> {
        let Some(guard) = self.try_pop_ref()? else {
            return Ok(None);
        };
        if guard.len() != size_of::<T>() {
            return Err(FabricError::WrongSize {
                expected: size_of::<T>(),
                found: guard.len(),
            });
        }
        let value = bytemuck::pod_read_unaligned(&guard);
        guard.finish()?;
        Ok(Some(value))
    }

    /// Pops a serde value, sleeping until one arrives.
    ///
    /// # Errors
    /// `Codec` if it does not decode (the record is consumed), or the
    /// errors of [`FabricQueue::pop_ref`].
    pub fn pop_serde<T: serde::de::DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let guard = self.pop_ref(timeout)?;
        let value = postcard::from_bytes(&guard).map_err(|e| FabricError::Codec(e.to_string()));
        guard.finish()?;
        value
    }

    // ----- waiting -----

    /// Sleeps until the `side` operation may proceed or `deadline` passes;
    /// every [`LIVENESS_PERIOD`] it checks whether it waits behind a claim
    /// of a dead process, and repairs that claim if so.
    fn wait(&self, side: Side, deadline: Option<Instant>) -> Result<(), QueueError> {
        let q = self.queue();
        let who = self.me.waiter();
        let blocker = || match side {
            Side::Push => q.push_blocker(),
            Side::Pop => q.pop_blocker(),
        };
        // Before sleeping, give the CPU to whoever may unblock us: with
        // more processes than cores that is often quicker than a futex
        // round trip (tens of microseconds on some machines). Yielding
        // first measured better than spinning first (BENCHMARKS.md).
        for _ in 0..WAIT_YIELDS {
            if !Blocker::blocks(&blocker()) {
                return Ok(());
            }
            std::thread::yield_now();
        }
        let mut slices = 0u32;
        loop {
            let slice = Instant::now() + LIVENESS_PERIOD;
            let until = deadline.map_or(slice, |d| d.min(slice));
            let ready = match side {
                Side::Push => q.wait_for_space(who, &LinuxFutex, WAIT_SPINS, Some(until)),
                Side::Pop => q.wait_for_data(who, &LinuxFutex, WAIT_SPINS, Some(until)),
            };
            if ready {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(QueueError::TimedOut);
            }
            // Now and then, sweep for every dead participant too: a
            // sleeper that died leaves its waiter bit set, which makes
            // every publish pay for a wake-up until it is cleared.
            slices += 1;
            if slices.is_multiple_of(SWEEP_SLICES) {
                self.inner.sweep()?;
            }
            if let Blocker::Claimed { owner, .. } = blocker()? {
                match q.repair_if_dead(me(), owner, is_dead, &LinuxFutex) {
                    Ok(true) => {
                        tracing::info!(
                            queue = %self.inner.segment.name(),
                            incarnation = owner.get(),
                            "repaired the claims of a dead participant"
                        );
                        return Ok(());
                    }
                    Ok(false) | Err(QueueError::RepairBusy) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    // ----- administration -----

    /// Seals the queue (for relocation): pushes fail with `Sealed` from now
    /// on, unpublished claims are tombstoned, pops drain what was published
    /// and then fail with `Sealed`. Returns the end position.
    ///
    /// # Errors
    /// `Queue(Corrupt)`.
    pub fn seal(&self) -> Result<u64> {
        Ok(self.queue().seal(&LinuxFutex)?)
    }

    /// Repairs every participant whose process is dead.
    ///
    /// # Errors
    /// `Queue(RepairBusy)` if a live process is repairing; `Queue(Corrupt)`.
    pub fn repair_dead(&self) -> Result<RepairReport> {
        Ok(self.queue().repair_dead(me(), is_dead, &LinuxFutex)?)
    }

    /// Repairs incarnation `dead`, whose process the caller killed: its
    /// unpublished claims become tombstones and its unfinished reads are
    /// freed.
    ///
    /// # Errors
    /// `Queue(Alive)` if the participant's process is still alive (its
    /// loans and borrowed records may still be in use); `Queue(RepairBusy)`
    /// if another live process or thread is repairing; `Queue(Corrupt)`.
    pub fn repair(&self, dead: Incarnation) -> Result<RepairReport> {
        Ok(self.queue().repair(me(), dead, is_dead, &LinuxFutex)?)
    }

    /// This handle's incarnation (the owner written into its claims).
    pub fn participant(&self) -> Participant {
        self.me
    }

    /// Current shared positions.
    pub fn positions(&self) -> QueuePositions {
        self.queue().positions()
    }

    /// Records claimed and not yet taken.
    pub fn depth(&self) -> u64 {
        self.positions().depth()
    }

    /// The queue's event counters (helps, repairs, tombstones, ...).
    pub fn counters(&self) -> QueueCounters {
        self.queue().counters()
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.inner.geo.capacity
    }

    /// Largest record in bytes.
    pub fn stride(&self) -> usize {
        self.inner.geo.stride as usize
    }

    /// The segment behind the queue.
    pub fn segment(&self) -> &Segment {
        &self.inner.segment
    }
}

impl<T> Drop for FabricQueue<T> {
    fn drop(&mut self) {
        // Loans and guards borrow `self`, so none is outstanding.
        self.queue().detach(&self.me, me());
    }
}

#[derive(Clone, Copy)]
enum Side {
    Push,
    Pop,
}

/// A mapped queue that is read, not used: see [`FabricQueue::inspector`].
pub struct QueueInspector(Inner);

impl std::fmt::Debug for QueueInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QueueInspector")
            .field(&self.0.segment)
            .finish()
    }
}

impl QueueInspector {
    /// The slots being written or read now, with their holders (a slot
    /// with a state no writer produces is skipped).
    pub fn claims(&self) -> Vec<ClaimSeen> {
        self.0.queue().claims()
    }
}

/// A record being written in place. Dropping it without `commit` abandons
/// it: it becomes a tombstone that consumers skip.
pub struct QueueLoan<'a> {
    queue: &'a Inner,
    /// Taken by `commit`; still here on drop means abandoned.
    claim: Option<Claim>,
}

impl QueueLoan<'_> {
    /// The record's bytes in the slot, to fill in.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let claim = self
            .claim
            .as_ref()
            .expect("a loan holds its claim until commit");
        // SAFETY: try_claim checked len <= stride, so the bytes lie in the
        // slot; the slot is WRITING under our incarnation, so nobody else
        // reads or writes it; `&mut self` makes this the only slice.
        unsafe {
            self.queue
                .slots
                .bytes_mut(claim.payload_offset(), claim.len())
        }
    }

    /// Publishes the record and returns its position.
    ///
    /// # Errors
    /// `Sealed` or `ClaimRepaired` if the claim was tombstoned meanwhile
    /// (the record is not delivered).
    pub fn commit(mut self) -> Result<u64, QueueError> {
        let claim = self
            .claim
            .take()
            .expect("a loan holds its claim until commit");
        let q = self.queue.queue();
        let position = q.publish(claim)?;
        q.wake_consumers(&LinuxFutex);
        Ok(position)
    }
}

impl Drop for QueueLoan<'_> {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            let q = self.queue.queue();
            q.abandon(claim);
            // Consumers may be waiting at the abandoned slot.
            q.data_wait_point().notify(&LinuxFutex);
        }
    }
}

/// A record borrowed in place from the queue. Its slot is released when
/// the guard is dropped or finished.
pub struct PopGuard<'a> {
    queue: &'a Inner,
    /// Taken by `finish`/drop.
    taken: Option<Taken>,
}

impl PopGuard<'_> {
    /// The record's position.
    pub fn position(&self) -> u64 {
        self.taken().position()
    }

    /// Copies the record out.
    pub fn to_vec(&self) -> Vec<u8> {
        let taken = self.taken();
        let mut out = vec![0; taken.len() as usize];
        self.queue.queue().copy_out(taken, &mut out);
        out
    }

    fn taken(&self) -> &Taken {
        self.taken
            .as_ref()
            .expect("a guard holds its slot until released")
    }

    /// Releases the slot.
    ///
    /// # Errors
    /// `ReadRepaired` if repair freed the slot first (this reader was
    /// judged dead): what was read may be torn and must be discarded.
    pub fn finish(mut self) -> Result<(), QueueError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), QueueError> {
        let Some(taken) = self.taken.take() else {
            return Ok(());
        };
        let q = self.queue.queue();
        let released = q.release(taken);
        q.wake_producers(&LinuxFutex);
        released
    }
}

impl Deref for PopGuard<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let taken = self.taken();
        // SAFETY: try_take checked len <= stride, so the bytes lie in the
        // slot; the slot is READING under our incarnation, so no producer
        // writes it until we release it, which needs `&mut self`.
        unsafe { self.queue.slots.bytes(taken.payload_offset(), taken.len()) }
    }
}

impl Drop for PopGuard<'_> {
    fn drop(&mut self) {
        // A failed release was counted (`late_publishes`); the caller who
        // wants to know uses `finish`.
        let _ = self.release();
    }
}

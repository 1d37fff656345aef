//! Relocatable edges: an edge log in a memory lease whose placement is
//! published through a handoff record, so that it can move to a fresh
//! segment while both ends keep going.
//!
//! ```no_run
//! use grafos_worker::block::BlockBuilder;
//! use grafos_worker::collections::queue::FabricQueue;
//! use grafos_worker::fence::FenceEpoch;
//! use grafos_worker::locator::QueueLocator;
//! use grafos_worker::locator::handoff::{HandoffReader, HandoffState, HandoffWriter};
//! use grafos_worker::mem::MemBuilder;
//! use grafos_worker::pipeline::RelocatableQueueEdge;
//! # fn main() -> grafos_worker::Result<()> {
//! let lease = MemBuilder::new().min_bytes(1 << 16).lease_secs(300).acquire()?;
//! let locator = QueueLocator::new(lease.lease_id(), 0, 1);
//! let queue: FabricQueue<Vec<u8>> = FabricQueue::new(lease, 16, 256)?;
//! let handoff = BlockBuilder::new().min_blocks(64).lease_secs(600).acquire()?;
//! let initial = HandoffState { stage_id: 1, generation: FenceEpoch::zero(), locator };
//! let mut writer = HandoffWriter::new(initial, handoff)?;
//! writer.publish(locator)?;
//! let reader = HandoffReader::new(writer.into_block_lease())?;
//! let mut edge = RelocatableQueueEdge::new(queue, locator, reader)?;
//! edge.push(&b"event-1".to_vec())?;
//! let cached = edge.generation();
//! edge.relocate()?;
//! assert!(edge.generation().is_stale(&cached));
//! assert_eq!(edge.pop()?, b"event-1");
//! edge.commit()?;
//! # Ok(()) }
//! ```
//!
//! **Relocation** seals the log (no publish succeeds after it), leases a
//! fresh segment of the same size, copies the records from the committed
//! position to the sealed end into it at their own positions, and
//! publishes generation + 1 by CAS on the handoff record; the old segment
//! is marked RELOCATED and this handle's hold on it released. Two
//! relocators cannot both win: the loser gives its segment back and
//! follows the winner.
//!
//! **Following** needs no message: every operation loads the segment's
//! fence word (one shared, read-mostly line). A producer whose publish
//! meets the seal, or a consumer that reads to the seal's end, or either
//! finding the segment POISONED, EXPIRED or RELOCATED, looks up the
//! handoff record and rebinds to the newest generation, or relocates
//! itself if none is newer. Positions survive the move, so a consumer
//! skips the records it already delivered, and a producer pushes again
//! the record whose publish the seal refused: nothing is lost silently.
//! What a relocation could not carry (a corrupt span) is counted in
//! [`EdgeStats::lost_spans`] and the instance's `edge_records_lost`.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use grafos_shm_layout::header::{FenceState, FenceWord};
use grafos_shm_layout::registry::Counter;

pub use grafos_shm_layout::edge::EdgeError;
use grafos_shm_layout::edge::{CONSUMER_WAITER, MAX_POSITION};
use grafos_shm_layout::wait::wait_any_with;

use crate::block::{BlockBuilder, BlockLease};
use crate::collections::Item;
use crate::collections::queue::FabricQueue;
use crate::edge::{EdgeConsumer, EdgeLog, EdgeProducer};
use crate::error::{FabricError, Result};
use crate::fence::FenceEpoch;
use crate::futex::LinuxFutex;
use crate::host::unix_time_ms;
use crate::locator::QueueLocator;
use crate::locator::handoff::{HandoffReader, HandoffState};
use crate::mem::{MemBuilder, MemLease};
use crate::participant::attach;

/// The longest a blocked push or pop sleeps before it looks at the fence
/// word, the leases and the stop flag again (a push waits for room on the
/// log's own wait point, which a poison or an expiry does not wake; a pop
/// sleeps on the fence word too).
pub const FENCE_CHECK: Duration = Duration::from_millis(20);

/// How long a handle that finds the log sealed, but no newer generation,
/// waits for the relocator to publish before relocating itself (the
/// relocator may have died half-way).
const RELOCATOR_WAIT: Duration = Duration::from_millis(500);

/// How long rebinding keeps trying while the supervisor is unreachable.
const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// Lease time of edge segments made by `new`, `open` and relocations
/// (renewed while the edge is used).
pub const EDGE_LEASE_SECS: u64 = 300;

/// How often the leases' deadlines are looked at.
const RENEW_CHECK: Duration = Duration::from_secs(1);

/// What a relocatable edge handle has seen and done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeStats {
    /// Times this handle bound to a newer generation someone else
    /// published.
    pub rebinds: u64,
    /// Relocations this handle made (and won).
    pub relocations: u64,
    /// Records those relocations carried.
    pub carried: u64,
    /// Spans those relocations could not carry (each held at least one
    /// record).
    pub lost_spans: u64,
    /// Records read again after a rebind or a restart and skipped as
    /// delivered (see [`RelocatableQueueEdge::resume_after`]).
    pub redeliveries: u64,
    /// Time spent binding to newer generations (opening and mapping the
    /// new segment), in nanoseconds, over all rebinds.
    pub rebind_ns: u64,
}

/// Where the edge lives now.
struct Bound {
    locator: QueueLocator,
    lease: MemLease,
    log: EdgeLog,
}

impl Bound {
    fn open(instance: &str, locator: QueueLocator) -> Result<Bound> {
        let lease = MemLease::open_in(instance, locator.lease_id)?;
        let log = EdgeLog::open_in(lease.segment().clone(), locator.offset)?;
        Ok(Bound {
            locator,
            lease,
            log,
        })
    }

    fn fence(&self) -> FenceWord {
        self.lease.segment().header().fence()
    }
}

/// A single-producer, single-consumer edge that survives the loss of its
/// segment: see the module documentation.
///
/// One handle may push, pop or both (each role is taken on first use and
/// held by one process at a time). `T` is the item type.
pub struct RelocatableQueueEdge<T = Vec<u8>> {
    instance: String,
    handoff: HandoffReader<QueueLocator>,
    bound: Bound,
    producer: Option<EdgeProducer>,
    consumer: Option<EdgeConsumer>,
    /// Position after the last record `pop` returned (or where
    /// `resume_after` says to start): records before it are skipped.
    delivered: Option<u64>,
    lease_secs: u64,
    /// Leases of superseded generations, to release.
    retired: Vec<MemLease>,
    /// Set by someone else to call blocked operations off.
    stop: Option<Arc<AtomicBool>>,
    next_renew_check: Instant,
    /// The furthest position this handle has seen in any generation (a
    /// bound log's tail, a push, a pop): a log made anew when a segment
    /// is lost starts past it, so positions never go back.
    high_water: u64,
    stats: EdgeStats,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for RelocatableQueueEdge<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelocatableQueueEdge")
            .field("locator", &self.bound.locator)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<T: Item> RelocatableQueueEdge<T> {
    /// Makes the edge in `queue`'s place: the queue must be the only
    /// handle on a lease-placed queue nothing was pushed to (from
    /// [`FabricQueue::new`]); its lease is formatted as an edge log with
    /// the largest ring that fits, and `locator` must name it. If the
    /// handoff record has nothing published yet, `locator` is published.
    ///
    /// # Errors
    /// `InvalidArgument` if the queue is in use or not where `locator`
    /// says, or the record names another placement; the errors of the
    /// lease and the handoff record.
    pub fn new(
        queue: FabricQueue<T>,
        locator: QueueLocator,
        mut handoff: HandoffReader<QueueLocator>,
    ) -> Result<RelocatableQueueEdge<T>> {
        let (lease, offset) = queue.into_unused_lease().map_err(|(e, _)| e)?;
        if (lease.lease_id(), offset) != (locator.lease_id, locator.offset) {
            return Err(FabricError::InvalidArgument(format!(
                "the queue is at offset {offset} of lease {}, the locator says {} of {}",
                lease.lease_id(),
                locator.offset,
                locator.lease_id
            )));
        }
        // Formatted before the record is read or published: the seed
        // publishes the locator before it makes the edge, and a peer that
        // binds early must find an edge log, not the queue.
        let log = EdgeLog::format_in(lease.segment().clone(), offset, u64::MAX, 0)?;
        let state = match handoff.current() {
            Ok(state) if state.locator == locator => state,
            Ok(state) => {
                return Err(FabricError::InvalidArgument(format!(
                    "the handoff record names {:?}, not {locator:?}",
                    state.locator
                )));
            }
            Err(FabricError::InvalidArgument(_)) if handoff.generation().value() == 0 => {
                let empty = HandoffState {
                    stage_id: 0,
                    generation: FenceEpoch::zero(),
                    locator,
                };
                handoff.publish(empty, locator)?
            }
            Err(e) => return Err(e),
        };
        Ok(RelocatableQueueEdge::bound_to(handoff, state, lease, log))
    }

    /// Makes an edge in a fresh memory lease of `bytes` (its ring: the
    /// largest power of two that fits) with a handoff record on a fresh
    /// block lease, both of `instance` for `lease_secs` (renewed while the
    /// edge is used). Give [`RelocatableQueueEdge::handoff_lease_id`] to
    /// the other end.
    ///
    /// # Errors
    /// The errors of leasing and of publishing the record.
    pub fn create(
        instance: &str,
        bytes: u64,
        lease_secs: u64,
        stage_id: u64,
    ) -> Result<RelocatableQueueEdge<T>> {
        let lease = MemBuilder::new()
            .instance(instance)
            .min_bytes(bytes)
            .lease_secs(lease_secs)
            .acquire()?;
        let log = EdgeLog::format_in(lease.segment().clone(), 0, u64::MAX, 0)?;
        let locator = QueueLocator::new(lease.lease_id(), 0, 1);
        let block = BlockBuilder::new()
            .instance(instance)
            .min_blocks(1)
            .lease_secs(lease_secs)
            .acquire()?;
        let mut handoff = HandoffReader::new(block)?;
        let empty = HandoffState {
            stage_id,
            generation: FenceEpoch::zero(),
            locator,
        };
        let state = handoff.publish(empty, locator)?;
        let mut edge = RelocatableQueueEdge::bound_to(handoff, state, lease, log);
        edge.set_lease_secs(lease_secs);
        Ok(edge)
    }

    /// Binds to the edge the handoff record currently names (the other
    /// end of an edge made elsewhere, or a restarted stage).
    ///
    /// # Errors
    /// `InvalidArgument` if nothing was published; the errors of the
    /// lease and the handoff record.
    pub fn open(mut handoff: HandoffReader<QueueLocator>) -> Result<RelocatableQueueEdge<T>> {
        let state = handoff.current()?;
        let bound = Bound::open(handoff.block_lease().instance(), state.locator)?;
        Ok(RelocatableQueueEdge::bound_to(
            handoff,
            state,
            bound.lease,
            bound.log,
        ))
    }

    /// A handle bound to the log in `lease` that `state` names.
    fn bound_to(
        handoff: HandoffReader<QueueLocator>,
        state: HandoffState<QueueLocator>,
        lease: MemLease,
        log: EdgeLog,
    ) -> RelocatableQueueEdge<T> {
        let high_water = log.positions().tail;
        let bound = Bound {
            locator: state.locator,
            lease,
            log,
        };
        RelocatableQueueEdge {
            instance: handoff.block_lease().instance().to_owned(),
            handoff,
            bound,
            producer: None,
            consumer: None,
            delivered: None,
            lease_secs: EDGE_LEASE_SECS,
            retired: Vec::new(),
            stop: None,
            next_renew_check: Instant::now(),
            high_water,
            stats: EdgeStats::default(),
            _item: PhantomData,
        }
    }

    /// Opens the edge whose handoff record is on block lease
    /// `handoff_lease_id` of `instance`.
    ///
    /// # Errors
    /// As [`RelocatableQueueEdge::open`], and the block lease's.
    pub fn open_by_id(instance: &str, handoff_lease_id: u64) -> Result<RelocatableQueueEdge<T>> {
        let block = BlockLease::open_in(instance, handoff_lease_id)?;
        RelocatableQueueEdge::open(HandoffReader::new(block)?)
    }

    /// Stops holding the edge's leases: once both ends released them (or
    /// their deadline passed), the segment and the record go.
    ///
    /// # Errors
    /// `Disconnected` if the supervisor cannot be told (the holds go all
    /// the same when this process exits).
    pub fn release(self) -> Result<()> {
        let RelocatableQueueEdge {
            handoff,
            bound,
            producer,
            consumer,
            retired,
            ..
        } = self;
        drop((producer, consumer));
        drop(bound.log);
        for lease in retired {
            let _ = lease.release();
        }
        let edge = match bound.lease.release() {
            Err(FabricError::LeaseExpired(_) | FabricError::LeasePoisoned(_)) => Ok(()),
            other => other,
        };
        let record = handoff.into_block_lease().release();
        edge.and(record)
    }

    // ----- pushing -----

    /// Appends an item, sleeping while the log is full; returns its
    /// position. Follows a relocation by itself.
    ///
    /// # Errors
    /// `Edge(TooLarge)`, `Edge(Corrupt)`, `RoleTaken` if a live process
    /// produces into this edge; errors of relocating or rebinding.
    pub fn push(&mut self, item: &T) -> Result<u64> {
        let bytes = item.to_bytes();
        loop {
            self.tick()?;
            if self.producer.is_none() {
                match self.bound.log.producer() {
                    Ok(producer) => self.producer = Some(producer),
                    Err(FabricError::Edge(EdgeError::Sealed)) => {
                        self.follow()?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let producer = self.producer.as_mut().expect("just bound");
            match producer.push(&bytes, Some(FENCE_CHECK)) {
                Ok(position) => {
                    self.high_water = self.high_water.max(producer.position());
                    return Ok(position);
                }
                Err(EdgeError::TimedOut) => {}
                Err(EdgeError::Sealed) => self.follow()?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    // ----- popping -----

    /// Takes the next item, sleeping until one arrives. Follows a
    /// relocation by itself.
    ///
    /// # Errors
    /// `Codec` if the record is not a `T`, `Edge(Corrupt)`, `RoleTaken`
    /// if a live process consumes this edge; errors of relocating or
    /// rebinding.
    pub fn pop(&mut self) -> Result<T> {
        loop {
            if let Some(item) = self.pop_timeout(None)? {
                return Ok(item);
            }
        }
    }

    /// Takes the next item if one is there.
    ///
    /// # Errors
    /// As [`RelocatableQueueEdge::pop`].
    pub fn try_pop(&mut self) -> Result<Option<T>> {
        self.pop_timeout(Some(Duration::ZERO))
    }

    /// Takes the next item, sleeping at most `timeout` (`None`: no limit)
    /// for one; `None` if none came.
    ///
    /// # Errors
    /// As [`RelocatableQueueEdge::pop`].
    pub fn pop_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<T>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            self.tick()?;
            if self.consumer.is_none() {
                self.consumer = Some(self.bound.log.consumer()?);
            }
            let consumer = self.consumer.as_mut().expect("just bound");
            match consumer.try_read() {
                Ok(Some(record)) => {
                    if self.delivered.is_some_and(|d| record.position() < d) {
                        self.stats.redeliveries += 1;
                        count(&self.instance, Counter::Redeliveries, 1);
                        continue;
                    }
                    self.delivered = Some(record.next_position());
                    self.high_water = self.high_water.max(record.next_position());
                    return T::from_bytes(record.bytes()).map(Some);
                }
                Ok(None) => {}
                Err(EdgeError::Sealed) => {
                    self.follow()?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let until = deadline.map_or(now + FENCE_CHECK, |d| d.min(now + FENCE_CHECK));
            self.wait_for_input(until);
        }
    }

    /// Sleeps until a record (or the seal) is published to the bound
    /// log, its segment's fence word changes (poisoned, expired), a new
    /// generation is published, or `until`: one `futex_waitv` on the three
    /// words.
    fn wait_for_input(&self, until: Instant) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let header = self.bound.lease.segment().header();
        let fence = header.fence();
        let generation = self.handoff.generation();
        // Values read before the first look at the condition: a change
        // after it makes the futex wait return at once.
        let fence_word = header.fence_futex();
        let fence_seen = fence_word.load(std::sync::atomic::Ordering::Acquire);
        let (handoff_word, handoff_seen) = self.handoff.futex_word();
        wait_any_with(
            &LinuxFutex,
            &[consumer.wait_point()],
            &[(fence_word, fence_seen), (handoff_word, handoff_seen)],
            CONSUMER_WAITER,
            Some(until),
            || {
                consumer.is_ready()
                    || header.fence() != fence
                    || self.handoff.generation() != generation
            },
        );
    }

    /// Commits everything popped so far: the log may reuse its bytes, and
    /// a consumer that binds later (a restarted stage) starts after it.
    ///
    /// # Errors
    /// `Edge(Corrupt)`.
    pub fn commit(&mut self) -> Result<()> {
        if let Some(consumer) = &mut self.consumer {
            consumer.commit_read();
        }
        Ok(())
    }

    /// Skips records before `position` from now on, counting them as
    /// redeliveries: for a restarted stage whose checkpoint says it
    /// handled everything before `position`.
    pub fn resume_after(&mut self, position: u64) {
        self.delivered = Some(self.delivered.map_or(position, |d| d.max(position)));
    }

    /// Position after the last item popped (or the `resume_after`
    /// position): what a stage checkpoints.
    pub fn delivered_position(&self) -> Option<u64> {
        self.delivered
    }

    // ----- placement -----

    /// The generation this handle is bound to.
    pub fn generation(&self) -> FenceEpoch {
        self.bound.locator.generation
    }

    /// Where this handle is bound.
    pub fn locator(&self) -> QueueLocator {
        self.bound.locator
    }

    /// Lease time for the edge's segments from now on (renewals and the
    /// segments relocations lease); default [`EDGE_LEASE_SECS`].
    pub fn set_lease_secs(&mut self, secs: u64) {
        self.lease_secs = secs.max(2);
    }

    /// The block lease holding the edge's handoff record: another
    /// process opens the edge with it ([`RelocatableQueueEdge::open`]).
    pub fn handoff_lease_id(&self) -> u64 {
        self.handoff.block_lease().lease_id()
    }

    /// What this handle has seen and done.
    pub fn stats(&self) -> EdgeStats {
        self.stats
    }

    /// Moves the edge to a fresh segment now (or follows a move someone
    /// else made since this handle bound); returns the new generation.
    ///
    /// # Errors
    /// The errors of leasing a segment and publishing the record.
    pub fn relocate(&mut self) -> Result<FenceEpoch> {
        let current = self.handoff.current()?;
        if current.generation > self.generation() {
            self.rebind(current)?;
        } else {
            self.relocate_from(current)?;
        }
        Ok(self.generation())
    }

    /// Calls this handle's operations off once `flag` is set: a push or
    /// pop blocked then (or called later) returns `Stopped` within
    /// [`FENCE_CHECK`].
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Leases to renew or release, the fence to check: run before every
    /// operation.
    fn tick(&mut self) -> Result<()> {
        if self
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(FabricError::Stopped(format!(
                "edge of handoff lease {} called off",
                self.handoff_lease_id()
            )));
        }
        let fence = self.bound.fence();
        if fence.state != FenceState::Active {
            tracing::info!(
                lease = self.bound.locator.lease_id,
                state = ?fence.state,
                "edge segment no longer active"
            );
            self.follow()?;
        }
        let now = Instant::now();
        if now >= self.next_renew_check {
            self.next_renew_check = now + RENEW_CHECK;
            self.renew_if_due();
        }
        Ok(())
    }

    /// Renews the edge's lease and the handoff's block lease once past
    /// half their time (a failure is logged: the next look tries again).
    fn renew_if_due(&mut self) {
        for lease in self.retired.drain(..) {
            if let Err(e) = lease.release() {
                tracing::debug!("releasing a superseded edge lease: {e}");
            }
        }
        let now = unix_time_ms();
        let half = self.lease_secs * 500;
        if self.bound.lease.deadline_ms().saturating_sub(now) < half
            && let Err(e) = self.bound.lease.renew(self.lease_secs)
        {
            tracing::warn!(
                lease = self.bound.lease.lease_id(),
                "renewing the edge lease: {e}"
            );
        }
        let block = self.handoff.block_lease();
        if block.deadline_ms().saturating_sub(now) < half
            && let Err(e) = block.renew(self.lease_secs.max(60))
        {
            tracing::warn!(lease = block.lease_id(), "renewing the handoff lease: {e}");
        }
    }

    /// The bound log is sealed or no longer active: rebind to a newer
    /// generation, waiting briefly for one if the log was sealed by a
    /// relocator still at work, else relocate.
    fn follow(&mut self) -> Result<()> {
        let mine = self.generation();
        let mut current = self.handoff.current()?;
        if current.generation <= mine && self.bound.fence().state == FenceState::Active {
            current = self.handoff.wait_newer(mine, Some(RELOCATOR_WAIT))?;
        }
        if current.generation > mine {
            self.rebind(current)
        } else {
            self.relocate_from(current)
        }
    }

    /// Binds to `current`, a newer generation; if its segment cannot be
    /// opened (lost before anyone bound it), relocates from it.
    fn rebind(&mut self, current: HandoffState<QueueLocator>) -> Result<()> {
        let started = Instant::now();
        let deadline = started + RECONNECT_WAIT;
        let bound = loop {
            match Bound::open(&self.instance, current.locator) {
                Ok(bound) => break bound,
                Err(FabricError::Disconnected { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(FENCE_CHECK);
                }
                Err(e @ FabricError::Disconnected { .. }) => return Err(e),
                Err(e) => {
                    // A handle that maps it (its relocator, the other end)
                    // relocates it, carrying its records, once it sees the
                    // fence: give it the time to.
                    let newer = self
                        .handoff
                        .wait_newer(current.generation, Some(RELOCATOR_WAIT))?;
                    if newer.generation > current.generation {
                        return self.rebind(newer);
                    }
                    tracing::warn!(
                        lease = current.locator.lease_id,
                        "the newest edge segment cannot be opened ({e}) and nobody moved it: \
                         relocating without its records"
                    );
                    return self.relocate_lost(current);
                }
            }
        };
        let old = self.swap(current, bound);
        self.stats.rebind_ns += started.elapsed().as_nanos() as u64;
        // Superseded and carried: given back at the next lease check, off
        // the path of the record that follows.
        self.retired.push(old.lease);
        self.stats.rebinds += 1;
        count(&self.instance, Counter::EdgeRebinds, 1);
        Ok(())
    }

    /// Moves the bound log (generation `current`) to a fresh segment.
    fn relocate_from(&mut self, current: HandoffState<QueueLocator>) -> Result<()> {
        let old = &self.bound;
        let (from, end, lost) = match old.log.seal() {
            Ok(end) => (old.log.positions().committed, end, false),
            Err(e) => {
                // The seal stopped at a corrupt header (claims were closed
                // first): carry up to the tail, and the carry counts what
                // it cannot read. Positions that make no sense leave
                // nothing to carry.
                tracing::error!(lease = old.locator.lease_id, "sealing the edge log: {e}");
                let at = old.log.positions();
                let fits = at.sealed
                    && at.committed.is_multiple_of(8)
                    && at.committed < MAX_POSITION
                    && at.committed <= at.tail
                    && at.tail - at.committed <= old.log.capacity()
                    && at.tail.is_multiple_of(8);
                if fits {
                    (at.committed, at.tail, false)
                } else {
                    let end = self.known_position();
                    (end, end, true)
                }
            }
        };
        let capacity = old.log.capacity();
        let (lease, log) = self.fresh_log(old.lease.len(), capacity, from)?;
        let mut carried = match old.log.carry_into(&log, from, end) {
            Ok(carried) => carried,
            Err(e) => {
                drop(log);
                let _ = lease.release();
                return Err(e);
            }
        };
        carried.lost_spans += u64::from(lost);
        self.publish(current, lease, log, carried)
    }

    /// Relocates when the newest segment is gone: the records in it are
    /// lost; positions go on from the furthest this handle knows.
    fn relocate_lost(&mut self, current: HandoffState<QueueLocator>) -> Result<()> {
        let from = self.known_position();
        let (lease, log) =
            self.fresh_log(self.bound.lease.len(), self.bound.log.capacity(), from)?;
        let carried = grafos_shm_layout::edge::Carried {
            lost_spans: 1,
            ..Default::default()
        };
        self.publish(current, lease, log, carried)
    }

    /// The furthest position this handle produced or consumed up to.
    fn known_position(&self) -> u64 {
        let produced = self.producer.as_ref().map_or(0, EdgeProducer::position);
        let consumed = self
            .consumer
            .as_ref()
            .map_or(0, EdgeConsumer::read_position);
        produced
            .max(consumed)
            .max(self.delivered.unwrap_or(0))
            .max(self.high_water)
    }

    fn fresh_log(&self, bytes: u64, capacity: u64, from: u64) -> Result<(MemLease, EdgeLog)> {
        let lease = MemBuilder::new()
            .instance(&self.instance)
            .min_bytes(bytes)
            .lease_secs(self.lease_secs)
            .acquire()?;
        let log = EdgeLog::format_in(lease.segment().clone(), 0, capacity, from);
        match log {
            Ok(log) if log.capacity() == capacity => Ok((lease, log)),
            Ok(_) => Err(FabricError::InvalidArgument(format!(
                "lease {} is too small for a {capacity}-byte ring",
                lease.lease_id()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Publishes the fresh log as the generation after `current`; on
    /// losing the race, gives it back and follows the winner.
    fn publish(
        &mut self,
        current: HandoffState<QueueLocator>,
        lease: MemLease,
        log: EdgeLog,
        carried: grafos_shm_layout::edge::Carried,
    ) -> Result<()> {
        let locator = QueueLocator {
            lease_id: lease.lease_id(),
            offset: 0,
            generation: current.generation.next(),
        };
        match self.handoff.publish(current, locator) {
            Ok(state) => {
                let old = self.swap(
                    state,
                    Bound {
                        locator,
                        lease,
                        log,
                    },
                );
                mark_relocated(&old);
                // Given back at the next lease check, off this path.
                self.retired.push(old.lease);
                self.stats.relocations += 1;
                self.stats.carried += carried.records;
                self.stats.lost_spans += carried.lost_spans;
                count(&self.instance, Counter::EdgeRelocations, 1);
                count(&self.instance, Counter::EdgeRecordsCarried, carried.records);
                count(&self.instance, Counter::EdgeRecordsLost, carried.lost_spans);
                if carried.lost_spans > 0 {
                    tracing::warn!(
                        spans = carried.lost_spans,
                        bytes = carried.lost_bytes,
                        "relocation could not carry every record"
                    );
                }
                tracing::info!(
                    generation = locator.generation.value(),
                    lease = locator.lease_id,
                    carried = carried.records,
                    "edge relocated"
                );
                Ok(())
            }
            Err(FabricError::Handoff(_)) => {
                drop(log);
                if let Err(e) = lease.release() {
                    tracing::debug!("giving back an unpublished edge lease: {e}");
                }
                // Lost the race (Conflict), or another publisher is in the
                // middle (Busy): follow what it publishes.
                let mine = self.generation();
                let winner = self.handoff.wait_newer(mine, Some(RELOCATOR_WAIT))?;
                if winner.generation > mine {
                    self.rebind(winner)
                } else {
                    Err(FabricError::Refused(format!(
                        "edge relocation: another publisher on handoff lease {} did not finish",
                        self.handoff_lease_id()
                    )))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `bound` (of `state`) current; returns the old binding, its
    /// roles released.
    fn swap(&mut self, state: HandoffState<QueueLocator>, bound: Bound) -> Bound {
        debug_assert_eq!(state.locator, bound.locator);
        self.producer = None;
        self.consumer = None;
        self.high_water = self.high_water.max(bound.log.positions().tail);
        std::mem::replace(&mut self.bound, bound)
    }
}

/// Marks a relocated segment RELOCATED unless it was fenced otherwise
/// (expired, poisoned); the seal already woke both ends.
fn mark_relocated(old: &Bound) {
    let header = old.lease.segment().header();
    let now = header.fence();
    if now.state == FenceState::Active {
        let relocated = FenceWord {
            generation: now.generation,
            state: FenceState::Relocated,
        };
        let _ = header.transition(now, relocated);
    }
}

/// Adds to an instance counter through this process's attachment.
fn count(instance: &str, counter: Counter, n: u64) {
    if n == 0 {
        return;
    }
    match attach(instance) {
        Ok(attachment) => attachment.count(counter, n),
        Err(e) => tracing::debug!("counting {}: {e}", counter.name()),
    }
}

//! Edge logs in shared memory: one producer process, one consumer process,
//! records kept until the consumer commits.
//!
//! ```no_run
//! use grafos_worker::edge::{EdgeConfig, EdgeLog};
//! use grafos_worker::segment::SegmentName;
//!
//! let name = SegmentName::new("default", "orders")?;
//! let log = EdgeLog::create(&name, &EdgeConfig::default())?;
//! let mut producer = log.producer()?;
//! producer.try_push(b"order-1")?;
//!
//! // In another process: EdgeLog::open(&name)?.consumer()?
//! let mut consumer = log.consumer()?;
//! let record = consumer.try_read()?.expect("published");
//! assert_eq!(record.bytes(), b"order-1");
//! let next = record.next_position();
//! consumer.commit(next)?;
//! # grafos_worker::segment::Segment::unlink(&name)?;
//! # Ok::<(), grafos_worker::FabricError>(())
//! ```
//!
//! The algorithm (framing, publication, commits, sealing) lives in
//! [`grafos_shm_layout::edge`]; this module maps it onto a segment and adds
//! blocking, zero-copy loans, borrowing reads and typed records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use grafos_shm_layout::edge::{
    CONTROL_SIZE, Carried, ConsumerCursor, Edge, EdgeControl, EdgeError, EdgeParams, Geometry,
    MAX_CAPACITY, MAX_POSITION, MIN_CAPACITY, ProducerCursor, RecordAt, Reservation,
};
use grafos_shm_layout::header::{Expect, SegmentKind, TypeDescriptor};

use crate::error::{FabricError, Result};
use crate::futex::LinuxFutex;
use crate::mapped::MappedRing;
use crate::mapped::deadline;
use crate::process::{ProcessId, is_dead, me};
use crate::segment::{Segment, SegmentName, SegmentSpec};

/// Spins before a blocking call registers and sleeps.
const WAIT_SPINS: u32 = 64;

/// How to create an edge log.
#[derive(Clone, Copy, Debug)]
pub struct EdgeConfig {
    /// Ring size in bytes: a power of two from 64 B to 1 TiB. The largest
    /// record is `capacity / 2 - 8` bytes.
    pub capacity: u64,
    /// Position of the first record (8-aligned); a relocated log continues
    /// the positions of its predecessor.
    pub start_position: u64,
    /// Records the log carries, checked by openers that ask.
    pub payload: TypeDescriptor,
    /// The instance's token.
    pub instance_token: u64,
    /// The lease the segment belongs to (0 outside a pool).
    pub lease_id: u64,
}

impl Default for EdgeConfig {
    fn default() -> EdgeConfig {
        EdgeConfig {
            capacity: 1 << 20,
            start_position: 0,
            payload: TypeDescriptor::BYTES,
            instance_token: 0,
            lease_id: 0,
        }
    }
}

struct Inner {
    segment: Segment,
    /// Where the control block starts in the segment's body (0 for an
    /// edge log segment of its own).
    offset: u64,
    geo: Geometry,
    ring: MappedRing,
}

// SAFETY: the raw pointer in `ring` points into `segment`'s mapping, which
// is shared memory meant for concurrent use through atomics and the edge
// protocol; `Inner` holds no thread-bound state.
unsafe impl Send for Inner {}
// SAFETY: as above; all shared mutation goes through atomics or through
// bytes the protocol assigns to one role.
unsafe impl Sync for Inner {}

impl Inner {
    /// Binds the edge log whose control block sits `offset` bytes into
    /// `segment`'s body (a segment of `kind`).
    fn bind(segment: Segment, kind: SegmentKind, offset: u64) -> Result<Inner> {
        let (base, ring_len) = segment.region_at(kind, offset, CONTROL_SIZE)?;
        // SAFETY: as in `ctrl`: `region_at` checked the block's bounds and
        // alignment.
        let ctrl = unsafe {
            &*segment
                .body()
                .as_ptr()
                .add(offset as usize)
                .cast::<EdgeControl>()
        };
        let geo =
            Geometry::validate(&ctrl.params(), ring_len).map_err(|source| FabricError::Layout {
                name: segment.name().to_string(),
                source,
            })?;
        Ok(Inner {
            ring: MappedRing::new(base, geo.capacity),
            segment,
            offset,
            geo,
        })
    }

    fn ctrl(&self) -> &EdgeControl {
        // SAFETY: the body starts 256 bytes into a page-aligned mapping and
        // `offset` is 128-aligned, so the block is 128-aligned; it holds
        // CONTROL_SIZE bytes (both checked by `region_at` in `bind`);
        // EdgeControl is atomics plus Pod params read by copy.
        unsafe {
            &*self
                .segment
                .body()
                .as_ptr()
                .add(self.offset as usize)
                .cast::<EdgeControl>()
        }
    }

    fn edge(&self) -> Edge<'_, MappedRing> {
        Edge::with_geometry(self.ctrl(), &self.ring, self.geo)
    }
}

/// An edge log segment. Cheap to clone; the producer and consumer handles
/// keep it mapped.
#[derive(Clone)]
pub struct EdgeLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EdgeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeLog")
            .field("segment", &self.inner.segment)
            .field("geometry", &self.inner.geo)
            .finish()
    }
}

/// A snapshot of an edge log's shared positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgePositions {
    /// End of the producer's last claim (published, or about to be).
    pub tail: u64,
    /// The consumer's committed position.
    pub committed: u64,
    /// Whether the log is sealed.
    pub sealed: bool,
}

impl EdgeLog {
    /// Creates an edge log segment named `name`.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad capacity or start position, and the
    /// errors of [`Segment::create`].
    pub fn create(name: &SegmentName, config: &EdgeConfig) -> Result<EdgeLog> {
        let params = EdgeParams::new(config.capacity)
            .map_err(|e| FabricError::InvalidArgument(format!("{e} (got {})", config.capacity)))?;
        check_start(config.start_position)?;
        let spec = SegmentSpec {
            kind: SegmentKind::EdgeLog,
            body_len: CONTROL_SIZE + config.capacity,
            lease_id: config.lease_id,
            instance_token: config.instance_token,
            payload: config.payload,
        };
        let segment = Segment::create(name, &spec)?;
        // SAFETY: the body is zeroed, 128-aligned, CONTROL_SIZE + capacity
        // bytes long, and unpublished until `activate`.
        unsafe {
            EdgeControl::init_in_place(
                segment.body().as_ptr().cast(),
                params,
                config.start_position,
            );
        }
        segment.activate();
        EdgeLog::from_segment(segment)
    }

    /// Opens an existing edge log, accepting any token and payload.
    ///
    /// # Errors
    /// See [`EdgeLog::open_with`].
    pub fn open(name: &SegmentName) -> Result<EdgeLog> {
        EdgeLog::open_with(name, &Expect::default())
    }

    /// Opens an existing edge log, checking the token and payload `expect`
    /// names (its `kind` is always `EdgeLog`).
    ///
    /// # Errors
    /// The errors of [`Segment::open`], and `Layout` if the control block
    /// is inconsistent.
    pub fn open_with(name: &SegmentName, expect: &Expect) -> Result<EdgeLog> {
        let expect = Expect {
            kind: Some(SegmentKind::EdgeLog),
            ..*expect
        };
        EdgeLog::from_segment(Segment::open(name, &expect)?)
    }

    /// Binds an already opened (validated) segment as an edge log.
    ///
    /// # Errors
    /// `Layout` if the segment is not an edge log or its control block is
    /// inconsistent.
    pub fn from_segment(segment: Segment) -> Result<EdgeLog> {
        Ok(EdgeLog {
            inner: Arc::new(Inner::bind(segment, SegmentKind::EdgeLog, 0)?),
        })
    }

    /// Formats an edge log `offset` bytes into a memory lease's segment
    /// (kind `Raw`), with the largest ring of at most `max_capacity` bytes
    /// that fits, starting at `start_position`.
    ///
    /// The caller must own the bytes from `offset` on (nobody else maps the
    /// structure there yet); they are zeroed first.
    ///
    /// # Errors
    /// `InvalidArgument` if `offset` is not 128-aligned, the start position
    /// is bad, or fewer than `CONTROL_SIZE + 64` bytes follow `offset`.
    pub(crate) fn format_in(
        segment: Segment,
        offset: u64,
        max_capacity: u64,
        start_position: u64,
    ) -> Result<EdgeLog> {
        let (_, room) = segment.region_at(SegmentKind::Raw, offset, CONTROL_SIZE)?;
        let fits = room.min(max_capacity).min(MAX_CAPACITY);
        if fits < MIN_CAPACITY {
            return Err(FabricError::InvalidArgument(format!(
                "an edge log needs {} bytes at offset {offset}; segment {} has {}",
                CONTROL_SIZE + MIN_CAPACITY,
                segment.name(),
                room + CONTROL_SIZE
            )));
        }
        let capacity = 1 << fits.ilog2();
        check_start(start_position)?;
        let params = EdgeParams::new(capacity).expect("a power of two within bounds");
        // SAFETY: `region_at` checked that offset + CONTROL_SIZE + capacity
        // bytes lie in the body; the caller owns them, so zeroing them and
        // initialising the control block races nobody; the block is
        // 128-aligned (`offset` is, and so is the body).
        unsafe {
            let start = segment.body().as_ptr().add(offset as usize);
            std::ptr::write_bytes(start, 0, (CONTROL_SIZE + capacity) as usize);
            EdgeControl::init_in_place(start.cast(), params, start_position);
        }
        EdgeLog::open_in(segment, offset)
    }

    /// Binds the edge log formatted `offset` bytes into a memory lease's
    /// segment.
    ///
    /// # Errors
    /// `Layout` if no consistent edge log is there.
    pub fn open_in(segment: Segment, offset: u64) -> Result<EdgeLog> {
        Ok(EdgeLog {
            inner: Arc::new(Inner::bind(segment, SegmentKind::Raw, offset)?),
        })
    }

    /// The segment behind the log.
    pub fn segment(&self) -> &Segment {
        &self.inner.segment
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.geo.capacity
    }

    /// Copies the records of `from..end` of this sealed log into `dst` (a
    /// fresh log of the same capacity starting at `from`), each at its own
    /// position; see [`Edge::carry_into`].
    ///
    /// # Errors
    /// `Edge(Corrupt)` if `dst` does not fit.
    pub fn carry_into(&self, dst: &EdgeLog, from: u64, end: u64) -> Result<Carried> {
        Ok(self.inner.edge().carry_into(&dst.inner.edge(), from, end)?)
    }

    /// Largest record payload in bytes.
    pub fn max_record(&self) -> usize {
        self.inner.geo.max_payload as usize
    }

    /// Current shared positions.
    pub fn positions(&self) -> EdgePositions {
        let (tail, committed, sealed) = self.inner.edge().positions();
        EdgePositions {
            tail,
            committed,
            sealed,
        }
    }

    /// Seals the log (for relocation): every later publish fails with
    /// `Sealed`; the consumer reads what was published, then gets `Sealed`.
    /// Returns the end position: every published record lies before it.
    ///
    /// # Errors
    /// `Edge(Corrupt)` if the published records are inconsistent.
    pub fn seal(&self) -> Result<u64> {
        Ok(self.inner.edge().seal(&LinuxFutex)?)
    }

    /// Takes the producer role. A role held by a dead process is taken
    /// over; the new producer continues after the last published record.
    ///
    /// # Errors
    /// `RoleTaken` if a live process holds it, `Edge(Sealed)` or
    /// `Edge(Corrupt)`.
    pub fn producer(&self) -> Result<EdgeProducer> {
        let edge = self.inner.edge();
        edge.claim_producer(me(), is_dead)
            .map_err(|owner| self.role_taken("producer", owner))?;
        match edge.producer_cursor() {
            Ok(cursor) => Ok(EdgeProducer {
                log: self.clone(),
                cursor,
            }),
            Err(e) => {
                edge.release_producer(me());
                Err(e.into())
            }
        }
    }

    /// Takes the consumer role. Reading resumes at the committed position,
    /// so records read but not committed by a dead consumer are read again.
    ///
    /// # Errors
    /// `RoleTaken` if a live process holds it, or `Edge(Corrupt)`.
    pub fn consumer(&self) -> Result<EdgeConsumer> {
        let edge = self.inner.edge();
        edge.claim_consumer(me(), is_dead)
            .map_err(|owner| self.role_taken("consumer", owner))?;
        match edge.consumer_cursor() {
            Ok(cursor) => Ok(EdgeConsumer {
                log: self.clone(),
                cursor,
            }),
            Err(e) => {
                edge.release_consumer(me());
                Err(e.into())
            }
        }
    }

    fn role_taken(&self, role: &'static str, owner: u64) -> FabricError {
        FabricError::RoleTaken {
            name: self.inner.segment.name().to_string(),
            role,
            owner: ProcessId::unpack(owner),
        }
    }
}

fn check_start(position: u64) -> Result<()> {
    if !position.is_multiple_of(8) || position >= MAX_POSITION {
        return Err(FabricError::InvalidArgument(format!(
            "start position {position} must be 8-aligned and below 2^62"
        )));
    }
    Ok(())
}

/// The producing end of an edge log.
pub struct EdgeProducer {
    log: EdgeLog,
    cursor: ProducerCursor,
}

impl EdgeProducer {
    /// Appends a record if there is room; returns its position.
    ///
    /// # Errors
    /// `Full`, `TooLarge`, `Sealed` or `Corrupt`.
    #[inline]
    pub fn try_push(&mut self, record: &[u8]) -> Result<u64, EdgeError> {
        let edge = self.log.inner.edge();
        let position = edge.try_push(&mut self.cursor, record)?;
        edge.wake_consumer(&LinuxFutex);
        Ok(position)
    }

    /// Appends a record, sleeping while the log is full, for at most
    /// `timeout` (`None`: no limit).
    ///
    /// # Errors
    /// `TimedOut`, `TooLarge`, `Sealed` or `Corrupt`.
    pub fn push(&mut self, record: &[u8], timeout: Option<Duration>) -> Result<u64, EdgeError> {
        let deadline = deadline(timeout);
        loop {
            match self.try_push(record) {
                Err(EdgeError::Full) => self.wait_for_space(record.len(), deadline)?,
                other => return other,
            }
        }
    }

    fn wait_for_space(&self, len: usize, deadline: Option<Instant>) -> Result<(), EdgeError> {
        let edge = self.log.inner.edge();
        if edge.wait_for_space(&self.cursor, len as u64, &LinuxFutex, WAIT_SPINS, deadline) {
            Ok(())
        } else {
            Err(EdgeError::TimedOut)
        }
    }

    /// Reserves room for a record of `len` bytes to be written in place
    /// (zero-copy); nothing is visible until [`Loan::commit`].
    ///
    /// # Errors
    /// `Full`, `TooLarge`, `Sealed` or `Corrupt`.
    pub fn try_reserve(&mut self, len: usize) -> Result<Loan<'_>, EdgeError> {
        let reservation = self
            .log
            .inner
            .edge()
            .try_reserve(&mut self.cursor, len as u64)?;
        Ok(Loan {
            producer: self,
            reservation: Some(reservation),
        })
    }

    /// Like [`EdgeProducer::try_reserve`], sleeping while the log is full.
    ///
    /// # Errors
    /// `TimedOut`, `TooLarge`, `Sealed` or `Corrupt`.
    pub fn reserve(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<Loan<'_>, EdgeError> {
        let deadline = deadline(timeout);
        loop {
            match self
                .log
                .inner
                .edge()
                .try_reserve(&mut self.cursor, len as u64)
            {
                Ok(reservation) => {
                    return Ok(Loan {
                        producer: self,
                        reservation: Some(reservation),
                    });
                }
                Err(EdgeError::Full) => self.wait_for_space(len, deadline)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends a `Pod` value as its bytes.
    ///
    /// # Errors
    /// As [`EdgeProducer::try_push`].
    pub fn try_push_pod<T: Pod>(&mut self, value: &T) -> Result<u64, EdgeError> {
        self.try_push(bytemuck::bytes_of(value))
    }

    /// Appends a serde value encoded with postcard, sleeping while full.
    ///
    /// # Errors
    /// `Codec` if encoding fails, or the errors of [`EdgeProducer::push`].
    pub fn push_serde<T: serde::Serialize>(
        &mut self,
        value: &T,
        timeout: Option<Duration>,
    ) -> Result<u64> {
        let bytes = postcard::to_allocvec(value).map_err(|e| FabricError::Codec(e.to_string()))?;
        Ok(self.push(&bytes, timeout)?)
    }

    /// Position the next record will get.
    pub fn position(&self) -> u64 {
        self.cursor.position()
    }

    /// The log this producer appends to.
    pub fn log(&self) -> &EdgeLog {
        &self.log
    }
}

impl Drop for EdgeProducer {
    fn drop(&mut self) {
        self.log.inner.edge().release_producer(me());
    }
}

/// A record being written in place. Dropping it without `commit` abandons
/// it: nothing becomes visible (the consumer skips it).
pub struct Loan<'a> {
    producer: &'a mut EdgeProducer,
    /// Taken by `commit`; still here on drop means abandoned.
    reservation: Option<Reservation>,
}

impl Loan<'_> {
    /// The record's bytes in the ring, to fill in.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let reservation = self
            .reservation
            .as_ref()
            .expect("a loan holds its reservation until commit");
        let record = reservation.record();
        // SAFETY: try_reserve checked payload_offset + len <= capacity; the
        // bytes were claimed by this producer and stay unpublished until
        // `commit`; `self` borrows the producer mutably, so there is one
        // such slice at a time.
        unsafe {
            self.producer
                .log
                .inner
                .ring
                .bytes_mut(record.payload_offset(), record.len())
        }
    }

    /// Publishes the record and returns its position.
    ///
    /// # Errors
    /// `Sealed` if the log was sealed meanwhile (the record is dropped).
    pub fn commit(mut self) -> Result<u64, EdgeError> {
        let reservation = self
            .reservation
            .take()
            .expect("a loan holds its reservation until commit");
        let edge = self.producer.log.inner.edge();
        let position = edge.publish(&mut self.producer.cursor, reservation)?;
        edge.wake_consumer(&LinuxFutex);
        Ok(position)
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let edge = self.producer.log.inner.edge();
            edge.abandon(&mut self.producer.cursor, reservation);
            // The consumer may be waiting at the abandoned record.
            edge.wake_consumer(&LinuxFutex);
        }
    }
}

/// The consuming end of an edge log.
pub struct EdgeConsumer {
    log: EdgeLog,
    cursor: ConsumerCursor,
}

/// A record borrowed from the ring; valid until the consumer commits past
/// it (which needs `&mut` of the consumer, so not while this lives).
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    bytes: &'a [u8],
    position: u64,
    next: u64,
}

impl<'a> RecordRef<'a> {
    /// The payload.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The record's position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The position after it: commit this once the record is handled.
    pub fn next_position(&self) -> u64 {
        self.next
    }
}

impl EdgeConsumer {
    fn record_ref(&self, at: RecordAt) -> RecordRef<'_> {
        // SAFETY: try_next checked payload_offset + len <= capacity; the
        // bytes are published and stay unchanged until we commit past them,
        // which needs `&mut self`.
        let bytes = unsafe { self.log.inner.ring.bytes(at.payload_offset(), at.len()) };
        RecordRef {
            bytes,
            position: at.position(),
            next: at.next(),
        }
    }

    /// Reads the next record if one is published.
    ///
    /// # Errors
    /// `Sealed` once the log is sealed and drained; `Corrupt`.
    #[inline]
    pub fn try_read(&mut self) -> Result<Option<RecordRef<'_>>, EdgeError> {
        let at = self.log.inner.edge().try_next(&mut self.cursor)?;
        Ok(at.map(|at| self.record_ref(at)))
    }

    /// Reads the next record, sleeping until one is published, for at
    /// most `timeout` (`None`: no limit).
    ///
    /// The producer reuses only committed space: a consumer that sleeps
    /// holding a log's worth of read but uncommitted records waits for a
    /// producer that waits for it. Commit before sleeping, or size the log
    /// for the commit batch.
    ///
    /// # Errors
    /// `TimedOut`, `Sealed` or `Corrupt`.
    pub fn read(&mut self, timeout: Option<Duration>) -> Result<RecordRef<'_>, EdgeError> {
        let deadline = deadline(timeout);
        let at = loop {
            let edge = self.log.inner.edge();
            if let Some(at) = edge.try_next(&mut self.cursor)? {
                break at;
            }
            if !edge.wait_for_data(&self.cursor, &LinuxFutex, WAIT_SPINS, deadline) {
                return Err(EdgeError::TimedOut);
            }
        };
        Ok(self.record_ref(at))
    }

    /// Reads the next record as a `Pod` value (copied out).
    ///
    /// # Errors
    /// `WrongSize` if the record's length is not `size_of::<T>()`, or the
    /// errors of [`EdgeConsumer::try_read`].
    pub fn try_read_pod<T: Pod>(&mut self) -> Result<Option<T>> {
        let Some(record) = self.try_read()? else {
            return Ok(None);
        };
        let bytes = record.bytes();
        if bytes.len() != size_of::<T>() {
            return Err(FabricError::WrongSize {
                expected: size_of::<T>(),
                found: bytes.len(),
            });
        }
        Ok(Some(bytemuck::pod_read_unaligned(bytes)))
    }

    /// Reads the next record as a serde value, sleeping until one arrives.
    ///
    /// # Errors
    /// `Codec` if it does not decode, or the errors of [`EdgeConsumer::read`].
    pub fn read_serde<T: serde::de::DeserializeOwned>(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let record = self.read(timeout)?;
        postcard::from_bytes(record.bytes()).map_err(|e| FabricError::Codec(e.to_string()))
    }

    /// Commits `position` (a record's `next_position`): the records before
    /// it are done with; their bytes may be reused, and a consumer that
    /// reopens the log resumes there.
    ///
    /// # Errors
    /// `BadPosition` unless `position` is a record boundary between the
    /// committed and the read position.
    pub fn commit(&mut self, position: u64) -> Result<(), EdgeError> {
        self.log
            .inner
            .edge()
            .commit(&mut self.cursor, position, &LinuxFutex)
    }

    /// Commits everything read so far.
    pub fn commit_read(&mut self) {
        let position = self.cursor.read_position();
        self.commit(position)
            .expect("the read position is always a record boundary");
    }

    /// Position after the last record read.
    pub fn read_position(&self) -> u64 {
        self.cursor.read_position()
    }

    /// The committed position.
    pub fn committed_position(&self) -> u64 {
        self.cursor.committed_position()
    }

    /// Whether a record (or the end of a sealed log) is waiting at the read
    /// position: the condition to re-check when sleeping on
    /// [`EdgeConsumer::wait_point`] with `wait_any`.
    pub fn is_ready(&self) -> bool {
        self.log.inner.edge().has_next(&self.cursor)
    }

    /// The wait point this consumer sleeps on, to wait on it together with
    /// others ([`grafos_shm_layout::wait::wait_any`]); re-check
    /// [`EdgeConsumer::is_ready`] as the condition, since the producer's
    /// wake-up is ordered with the record's header, not with other words.
    pub fn wait_point(&self) -> &grafos_shm_layout::wait::WaitPoint {
        self.log.inner.edge().data_wait_point()
    }

    /// The log this consumer reads.
    pub fn log(&self) -> &EdgeLog {
        &self.log
    }
}

impl Drop for EdgeConsumer {
    fn drop(&mut self) {
        self.log.inner.edge().release_consumer(me());
    }
}

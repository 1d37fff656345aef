//! Topics in shared memory, named per instance: [`TopicManager`] creates,
//! opens, describes and deletes them; a [`Topic`] handle appends and reads
//! partitions (the algorithm is `grafos_shm_layout::topic`).
//!
//! A topic lives in one memory lease; `<runtime dir>/topics/<name>` holds
//! its lease id, so every process of the instance finds it by name.
//! Records can be replayed from any offset still retained for as long as
//! the lease lives (renew it, or give it a long TTL).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use grafos_shm_layout::queue::Blocker;
use grafos_shm_layout::topic::{
    self as layout, CONTROL_SIZE, ClaimSeen, CoordStats, Geometry, GroupId, Member, MemberId,
    Owned, Partition, PartitionControl, PartitionStats, Read, Rebalance, TOPIC_MAGIC, TopicControl,
    TopicError, TopicParams,
};
use grafos_shm_layout::wait::wait_any;

pub use grafos_shm_layout::topic::Overflow;

use crate::error::{FabricError, Result};
use crate::futex::LinuxFutex;
use crate::host::unix_time_ms;
use crate::instance::{
    InstancePaths, instance_from_env, names_dir, open_locked, read_lease_id,
    validate_object_name as validate_name, write_lease_id,
};
use crate::mapped::{Backing, MappedRing};
use crate::mem::{MemBuilder, MemLease};
use crate::process::{fork_generation, is_dead, me};
use crate::segment::Segment;

/// Lease TTL of a topic made without options (seconds).
pub const DEFAULT_TOPIC_LEASE_SECS: u64 = 3600;
/// How long a consumer group with no live member keeps holding producers
/// back under [`Overflow::Backpressure`], unless set otherwise.
pub const DEFAULT_GROUP_RETENTION: Duration = Duration::from_secs(30);
/// Longest topic name.
pub const MAX_TOPIC_NAME: usize = crate::instance::MAX_OBJECT_NAME;
/// How long a blocked call sleeps before it checks for dead producers and
/// idle groups.
const LIVENESS_PERIOD: Duration = Duration::from_millis(10);
/// Yields before a blocked call sleeps.
pub(crate) const WAIT_YIELDS: u32 = 8;

/// A topic's shape, as the seed writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    /// Partitions (1 to 1024).
    pub num_partitions: u32,
    /// Records each partition retains (1 to 2^31).
    pub partition_capacity: u64,
    /// Largest record in bytes (1 B to 16 MiB).
    pub partition_stride: u64,
}

/// How a topic treats overflow and how long it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicOptions {
    /// What producers do when a partition is full.
    pub overflow: Overflow,
    /// How long a group with no live member holds producers back.
    pub group_retention: Duration,
    /// The topic lease's TTL in seconds.
    pub lease_secs: u64,
}

impl Default for TopicOptions {
    fn default() -> TopicOptions {
        TopicOptions {
            overflow: Overflow::Overwrite,
            group_retention: DEFAULT_GROUP_RETENTION,
            lease_secs: DEFAULT_TOPIC_LEASE_SECS,
        }
    }
}

impl TopicOptions {
    /// Producers wait for the slowest holding group instead of overwriting.
    pub fn backpressure() -> TopicOptions {
        TopicOptions {
            overflow: Overflow::Backpressure,
            ..TopicOptions::default()
        }
    }
}

/// Topics of one instance, opened once per manager and cached.
#[derive(Debug)]
pub struct TopicManager {
    instance: String,
    open: Mutex<HashMap<String, Arc<Topic>>>,
}

impl Default for TopicManager {
    fn default() -> TopicManager {
        TopicManager::new()
    }
}

impl TopicManager {
    /// Topics of the instance `GRAFOS_INSTANCE` names (else `default`);
    /// nothing is opened until used.
    pub fn new() -> TopicManager {
        TopicManager::in_instance(&instance_from_env())
    }

    /// Topics of `instance`.
    pub fn in_instance(instance: &str) -> TopicManager {
        TopicManager {
            instance: instance.to_string(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Creates topic `name` with overwrite on overflow.
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidName`, `InvalidArgument`, lease errors.
    pub fn create(&mut self, name: &str, config: TopicConfig) -> Result<()> {
        self.create_with(name, config, TopicOptions::default())
    }

    /// Creates topic `name` as `options` say.
    ///
    /// # Errors
    /// As [`TopicManager::create`].
    pub fn create_with(
        &mut self,
        name: &str,
        config: TopicConfig,
        options: TopicOptions,
    ) -> Result<()> {
        self.make(name, config, options, true).map(|_| ())
    }

    /// Opens topic `name`, creating it as given if it does not exist (what
    /// several processes that all need the topic call). Returns whether it
    /// was created.
    ///
    /// # Errors
    /// As [`TopicManager::create`], except `AlreadyExists`.
    pub fn create_or_open(
        &mut self,
        name: &str,
        config: TopicConfig,
        options: TopicOptions,
    ) -> Result<bool> {
        self.make(name, config, options, false)
            .map(|(_, made)| made)
    }

    fn make(
        &mut self,
        name: &str,
        config: TopicConfig,
        options: TopicOptions,
        must_be_new: bool,
    ) -> Result<(Arc<Topic>, bool)> {
        validate_name(name)?;
        let params = TopicParams::new(
            u64::from(config.num_partitions),
            config.partition_capacity,
            config.partition_stride,
            options.overflow,
            options.group_retention.as_millis() as u64,
        )
        .map_err(|e| FabricError::InvalidArgument(format!("topic {name}: {e}")))?;
        let dir = topics_dir(&self.instance)?;
        let _lock = open_locked(&dir.join(".lock"))?;
        if let Some(id) = read_lease_id(&dir, name)? {
            match Topic::open_lease(&self.instance, name, id) {
                Ok(_) if must_be_new => {
                    return Err(FabricError::AlreadyExists(format!("topic {name}")));
                }
                Ok(topic) => {
                    let made = (
                        topic.partitions(),
                        topic.capacity(),
                        topic.stride(),
                        topic.overflow(),
                    );
                    let asked = (
                        config.num_partitions,
                        config.partition_capacity,
                        config.partition_stride,
                        options.overflow,
                    );
                    if made != asked {
                        return Err(FabricError::InvalidArgument(format!(
                            "topic {name} exists with (partitions, capacity, stride, overflow) = {made:?}, not {asked:?}"
                        )));
                    }
                    return Ok((self.cache(name, topic), false));
                }
                // A topic whose lease ended is gone: make it anew.
                Err(FabricError::UnknownLease(_) | FabricError::LeaseExpired(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let lease = MemBuilder::new()
            .instance(&self.instance)
            .min_bytes(params.total_len())
            .lease_secs(options.lease_secs)
            .acquire()?;
        let params = TopicParams {
            lease_id: lease.lease_id(),
            lease_secs: options.lease_secs,
            ..params
        };
        let ptr = control_ptr(&lease.segment().body(), lease.len(), params.total_len())?;
        // SAFETY: the lease is fresh (zeroed; nobody else knows its id
        // yet), holds total_len bytes at its 128-aligned body start.
        unsafe { TopicControl::init_in_place(ptr.as_ptr(), params) };
        let id = lease.lease_id();
        let topic = Topic::bind(name, &self.instance, Backing::Lease(lease))?;
        write_lease_id(&dir, name, id)?;
        tracing::info!(topic = name, lease_id = id, "created topic");
        Ok((self.cache(name, topic), true))
    }

    fn cache(&self, name: &str, topic: Topic) -> Arc<Topic> {
        let topic = Arc::new(topic);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::clone(&topic));
        topic
    }

    /// Topic `name`, opened (and cached) on first use; a cached handle
    /// whose lease ended is opened again.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic; lease and layout errors.
    pub fn open(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(topic) = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            && topic.opened_here()
            && topic.check().is_ok()
        {
            return Ok(Arc::clone(topic));
        }
        validate_name(name)?;
        let dir = topics_dir(&self.instance)?;
        let id = read_lease_id(&dir, name)?
            .ok_or_else(|| FabricError::NotFound(format!("topic {name}")))?;
        let topic = Topic::open_lease(&self.instance, name, id).map_err(|e| match e {
            FabricError::UnknownLease(_) | FabricError::LeaseExpired(_) => {
                FabricError::NotFound(format!("topic {name} (its lease {id} ended)"))
            }
            e => e,
        })?;
        Ok(self.cache(name, topic))
    }

    /// Shape, positions, groups and counters of topic `name`.
    ///
    /// # Errors
    /// As [`TopicManager::open`].
    pub fn describe(&self, name: &str) -> Result<TopicDescription> {
        Ok(self.open(name)?.describe())
    }

    /// Names of the instance's topics.
    ///
    /// # Errors
    /// `Io` reading the runtime dir.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = topics_dir(&self.instance)?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| FabricError::from_io(&e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes topic `name`: forgets its name and releases this process's
    /// hold on its lease (the memory goes once every holder let go).
    ///
    /// # Errors
    /// `NotFound`, `Io`.
    pub fn delete(&mut self, name: &str) -> Result<()> {
        validate_name(name)?;
        let dir = topics_dir(&self.instance)?;
        let _lock = open_locked(&dir.join(".lock"))?;
        let id = read_lease_id(&dir, name)?
            .ok_or_else(|| FabricError::NotFound(format!("topic {name}")))?;
        if let Ok(topic) = Topic::open_lease(&self.instance, name, id) {
            // Every handle, in every process, sees it at its next call.
            topic.ctrl().mark_deleted();
        }
        std::fs::remove_file(dir.join(name)).map_err(|e| FabricError::from_io(&e))?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        match MemLease::open_in(&self.instance, id) {
            Ok(lease) => lease.release().or_else(|e| match e {
                FabricError::LeaseExpired(_) => Ok(()),
                e => Err(e),
            }),
            Err(FabricError::UnknownLease(_) | FabricError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn topics_dir(instance: &str) -> Result<std::path::PathBuf> {
    names_dir(instance, "topics")
}

/// The control block at the start of a body of `len` bytes, if a topic of
/// `needed` bytes fits.
fn control_ptr(body: &NonNull<u8>, len: u64, needed: u64) -> Result<NonNull<TopicControl>> {
    if len < needed.max(CONTROL_SIZE) {
        return Err(FabricError::InvalidArgument(format!(
            "a topic of {needed} bytes does not fit {len} bytes"
        )));
    }
    Ok(body.cast())
}

/// One group's view in a [`TopicDescription`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group's name.
    pub name: String,
    /// Whether it holds producers back (backpressure).
    pub holding: bool,
    /// Member processes recorded and alive.
    pub live_members: usize,
    /// Unix milliseconds of its last poll or commit.
    pub last_active_ms: u64,
    /// Committed offset per partition.
    pub committed: Vec<u64>,
    /// Generation and rebalance counters.
    pub coordination: CoordStats,
    /// Named members ([`crate::mq::group::ConsumerGroup`]) and their
    /// partitions.
    pub members: Vec<MemberDescription>,
}

/// A named member of a consumer group in a [`GroupDescription`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// Its name.
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// Unix milliseconds of its last heartbeat.
    pub heartbeat_ms: u64,
    /// Its session timeout in ms.
    pub session_ms: u64,
    /// The partitions it owns.
    pub partitions: Vec<u32>,
}

/// One partition's view in a [`TopicDescription`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Next offset appended (the head).
    pub head: u64,
    /// Oldest offset retained (the tail).
    pub tail: u64,
    /// Counters.
    pub stats: PartitionStats,
}

/// What `describe` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    /// The topic's name.
    pub name: String,
    /// Its lease.
    pub lease_id: u64,
    /// Records retained per partition.
    pub capacity: u64,
    /// Largest record.
    pub stride: u64,
    /// Overflow policy.
    pub overflow: Overflow,
    /// Group retention in milliseconds.
    pub group_retention_ms: u64,
    /// Participant entries in use.
    pub participants: usize,
    /// Dead producers repaired.
    pub repairs: u64,
    /// Groups released for idleness.
    pub groups_released: u64,
    /// Per partition.
    pub partitions: Vec<PartitionDescription>,
    /// Per group.
    pub groups: Vec<GroupDescription>,
}

impl TopicDescription {
    /// `group`'s lag in partition `p` (records appended and not committed).
    pub fn lag(&self, group: &GroupDescription, p: usize) -> u64 {
        self.partitions[p]
            .head
            .saturating_sub(group.committed[p].max(self.partitions[p].tail))
    }
}

/// A mapped topic. Shared between the threads of a process (appends
/// from several threads share one producer incarnation).
pub struct Topic {
    name: String,
    backing: Backing,
    ctrl: NonNull<TopicControl>,
    parts: Vec<(NonNull<PartitionControl>, MappedRing)>,
    geo: Geometry,
    /// The TTL the lease is renewed for (0: never renewed).
    lease_secs: u64,
    /// The fork generation that opened the handle.
    generation: u64,
    /// Appends through this handle (roughly: counted without an atomic
    /// read-modify-write), to look at the lease's deadline now and then.
    appends: AtomicU64,
    /// An append was cut short (a panic between claim and publish): the
    /// handle's claims are tombed when it detaches.
    cut_short: AtomicBool,
    /// This process's participant entry, attached on first use, with the
    /// fork generation that attached it (a forked child must not use its
    /// parent's).
    member: OnceLock<(u64, Member)>,
    /// Held while attaching (once).
    attaching: Mutex<()>,
}

// SAFETY: the pointers point into the mapping that `backing` keeps alive
// for the handle's life; shared memory is only accessed through atomics
// and the topic protocol; the member entry is behind a mutex.
unsafe impl Send for Topic {}
// SAFETY: as above.
unsafe impl Sync for Topic {}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("lease_id", &self.backing.lease_id())
            .field("partitions", &self.geo.partitions)
            .finish()
    }
}

impl Topic {
    fn open_lease(instance: &str, name: &str, lease_id: u64) -> Result<Topic> {
        let lease = MemLease::open_in(instance, lease_id)?;
        lease.check()?;
        Topic::bind(name, instance, Backing::Lease(lease))
    }

    /// For the supervisor, which owns the leases: the topic in a memory
    /// lease's `segment`, if it holds one.
    ///
    /// # Errors
    /// `Layout` if the segment holds a topic that fails validation.
    pub fn inspect(segment: Segment, instance: &str) -> Result<Option<Topic>> {
        if segment.body_len() < CONTROL_SIZE {
            return Ok(None);
        }
        // SAFETY: the body holds at least CONTROL_SIZE bytes and starts
        // 8-aligned; the first word is the magic, written last at creation.
        let magic = unsafe {
            &*segment
                .body()
                .as_ptr()
                .cast::<std::sync::atomic::AtomicU64>()
        }
        .load(std::sync::atomic::Ordering::Acquire);
        if magic != TOPIC_MAGIC {
            return Ok(None);
        }
        let name = find_name(instance, segment.fields().lease_id)
            .unwrap_or_else(|| format!("lease-{}", segment.fields().lease_id));
        // A copy of a topic's bytes in a lease of another kind (a stored
        // object) is not a topic: a topic names its own lease.
        let ctrl = control_ptr(&segment.body(), segment.body_len(), CONTROL_SIZE)?;
        // SAFETY: CONTROL_SIZE bytes at the body start (checked above),
        // mapped while `segment` lives; the parameters are read by copy.
        if unsafe { ctrl.as_ref() }.params().lease_id != segment.fields().lease_id {
            return Ok(None);
        }
        Topic::bind(&name, instance, Backing::Segment(segment)).map(Some)
    }

    fn bind(name: &str, _instance: &str, backing: Backing) -> Result<Topic> {
        let body = backing.segment().body();
        let len = backing.len();
        let corrupt = |e: TopicError| {
            FabricError::InvalidArgument(format!(
                "lease {} holds no valid topic: {e}",
                backing.lease_id()
            ))
        };
        let ctrl = control_ptr(&body, len, CONTROL_SIZE)?;
        // SAFETY: CONTROL_SIZE bytes at the 128-aligned body start (checked
        // by `control_ptr`), mapped while `backing` lives.
        let params = unsafe { ctrl.as_ref() }.params();
        let geo = Geometry::validate(&params, len).map_err(corrupt)?;
        if params.lease_id != backing.lease_id() {
            return Err(corrupt(TopicError::Corrupt(
                "the topic was made in another lease (a copy of its bytes)",
            )));
        }
        let parts = (0..geo.partitions)
            .map(|p| {
                // SAFETY: `validate` checked that every partition's control
                // block and slots lie inside the body's `len` bytes.
                unsafe {
                    (
                        NonNull::new_unchecked(
                            body.as_ptr().add(params.partition_control_at(p) as usize),
                        )
                        .cast::<PartitionControl>(),
                        MappedRing::new(
                            NonNull::new_unchecked(body.as_ptr().add(params.slots_at(p) as usize)),
                            params.slots_len(),
                        ),
                    )
                }
            })
            .collect();
        Ok(Topic {
            name: name.to_string(),
            backing,
            ctrl,
            parts,
            geo,
            lease_secs: params.lease_secs,
            generation: fork_generation(),
            appends: AtomicU64::new(0),
            cut_short: AtomicBool::new(false),
            member: OnceLock::new(),
            attaching: Mutex::new(()),
        })
    }

    fn ctrl(&self) -> &TopicControl {
        // SAFETY: validated at bind; mapped while `backing` lives.
        unsafe { self.ctrl.as_ref() }
    }

    /// Partition `p` bound to the algorithm.
    fn partition(&self, p: u32) -> Result<Partition<'_, MappedRing>> {
        let (ctrl, ring) = self.parts.get(p as usize).ok_or_else(|| {
            FabricError::InvalidArgument(format!(
                "topic {} has {} partitions; there is no partition {p}",
                self.name, self.geo.partitions
            ))
        })?;
        // SAFETY: validated at bind; 128-aligned (CONTROL_SIZE and
        // PARTITION_CONTROL_SIZE are multiples of 128); mapped while
        // `backing` lives.
        let ctrl = unsafe { ctrl.as_ref() };
        Ok(Partition::new(self.ctrl(), ctrl, ring, self.geo))
    }

    fn all(&self) -> Vec<Partition<'_, MappedRing>> {
        (0..self.geo.partitions as u32)
            .map(|p| self.partition(p).expect("in range"))
            .collect()
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.geo.partitions as u32
    }

    /// Records retained per partition.
    pub fn capacity(&self) -> u64 {
        self.geo.capacity
    }

    /// Largest record.
    pub fn stride(&self) -> u64 {
        self.geo.stride
    }

    /// The overflow policy.
    pub fn overflow(&self) -> Overflow {
        self.geo.overflow
    }

    /// The topic's lease id.
    pub fn lease_id(&self) -> u64 {
        self.backing.lease_id()
    }

    /// Renews the topic's lease for `lease_secs`.
    ///
    /// # Errors
    /// Lease errors; `InvalidArgument` for a supervisor's handle.
    pub fn renew(&self, lease_secs: u64) -> Result<()> {
        match &self.backing {
            Backing::Lease(lease) => lease.renew(lease_secs),
            Backing::Segment(_) => Err(FabricError::InvalidArgument(
                "a supervisor's topic handle holds no lease".into(),
            )),
        }
    }

    /// Ok while the topic's lease is active.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`; `NotFound` once deleted.
    pub fn check(&self) -> Result<()> {
        self.backing.check()?;
        if self.ctrl().is_deleted() {
            return Err(FabricError::NotFound(format!(
                "topic {} (deleted)",
                self.name
            )));
        }
        Ok(())
    }

    fn layout_error(&self, e: TopicError) -> FabricError {
        FabricError::Topic {
            topic: self.name.clone(),
            source: e,
        }
    }

    /// This process's participant entry, attached on first use.
    ///
    /// # Errors
    /// `Topic` (`TooManyParticipants`, ...); `InvalidArgument` in a child
    /// forked from the process that opened the handle (its incarnation is
    /// the parent's: the child must open the topic itself).
    fn member(&self) -> Result<Member> {
        let own = |&(generation, m): &(u64, Member)| {
            if generation == fork_generation() {
                Ok(m)
            } else {
                Err(FabricError::InvalidArgument(format!(
                    "topic {}: a handle opened before a fork is used in the child; open the topic again",
                    self.name
                )))
            }
        };
        if let Some(entry) = self.member.get() {
            return own(entry);
        }
        let _attaching = self.attaching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = self.member.get() {
            return own(entry);
        }
        let m = self
            .ctrl()
            .attach(me(), is_dead, &self.all(), &LinuxFutex)
            .map_err(|e| self.layout_error(e))?;
        let _ = self.member.set((fork_generation(), m));
        Ok(m)
    }

    /// Appends `payload` to partition `p`; returns its offset. Under
    /// backpressure it waits up to `timeout` (`None`: for ever) for room.
    ///
    /// # Errors
    /// `Topic` (`TooLarge`, `TimedOut`, `ClaimRepaired`, ...), lease errors.
    pub fn append(&self, p: u32, payload: &[u8], timeout: Option<Duration>) -> Result<u64> {
        self.check()?;
        let part = self.partition(p)?;
        let member = self.member()?;
        let deadline = crate::mapped::deadline(timeout);
        let mut yields = 0;
        self.keep_alive();
        loop {
            let guard = CutShort(&self.cut_short);
            let appended = part.append(member.incarnation(), payload);
            std::mem::forget(guard);
            match appended {
                Ok(offset) => {
                    part.wake_consumers(&LinuxFutex);
                    return Ok(offset);
                }
                // With more processes than cores, giving the CPU to the
                // consumer is quicker than a futex round trip.
                Err(TopicError::Full) if yields < WAIT_YIELDS => {
                    yields += 1;
                    std::thread::yield_now();
                }
                Err(TopicError::Full) => {
                    self.ctrl()
                        .release_idle_groups(me(), unix_time_ms(), is_dead);
                    let slice = slice_until(deadline)
                        .ok_or_else(|| self.layout_error(TopicError::TimedOut))?;
                    part.space_wait_point().wait_until(
                        &LinuxFutex,
                        member.waiter(),
                        64,
                        Some(slice),
                        || part.has_room(),
                    );
                }
                // A producer a lap behind still writes the slot: repair it
                // if it is dead, else sleep until its publish (which wakes
                // the data wait point) or a liveness period.
                Err(TopicError::Busy(Blocker::Claimed { owner, word })) => {
                    self.repair_if_dead(self.ctrl().holder_of(owner))?;
                    let slice = slice_until(deadline)
                        .ok_or_else(|| self.layout_error(TopicError::TimedOut))?;
                    part.data_wait_point().wait_until(
                        &LinuxFutex,
                        member.waiter(),
                        64,
                        Some(slice),
                        || part.tail_slot_word() != word,
                    );
                }
                Err(e) => return Err(self.layout_error(e)),
            }
        }
    }

    /// Renews the lease once half its TTL has passed; looked at every
    /// 1024th append and by consumers' polls. A failed renewal is logged:
    /// the next calls report the lease's end if it comes.
    pub(crate) fn keep_alive(&self) {
        let n = self.appends.load(Ordering::Relaxed);
        self.appends.store(n.wrapping_add(1), Ordering::Relaxed);
        if !n.is_multiple_of(1024) || self.lease_secs == 0 {
            return;
        }
        if let Backing::Lease(lease) = &self.backing {
            let left = lease.deadline_ms().saturating_sub(unix_time_ms());
            if left < self.lease_secs * 500
                && let Err(e) = lease.renew(self.lease_secs)
            {
                tracing::warn!(topic = %self.name, "renewing the topic's lease: {e}");
            }
        }
    }

    /// Repairs dead producers if `holder` (a claim's holder) is dead or
    /// unknown.
    fn repair_if_dead(&self, holder: u64) -> Result<()> {
        if holder == 0 || is_dead(holder) {
            match self.repair_dead() {
                Ok(_)
                | Err(FabricError::Topic {
                    source: TopicError::AdminBusy,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Repairs every dead producer's unpublished claims; returns the
    /// claims tombed.
    ///
    /// # Errors
    /// `Topic` (`AdminBusy`, `Corrupt`).
    pub fn repair_dead(&self) -> Result<u64> {
        let tombed = self
            .ctrl()
            .repair_dead(me(), is_dead, &self.all(), &LinuxFutex)
            .map_err(|e| self.layout_error(e))?;
        if tombed > 0 {
            tracing::info!(topic = %self.name, claims = tombed, "repaired dead producers' claims");
        }
        Ok(tombed)
    }

    /// Reads the record at `offset` of partition `p` into `out`,
    /// repairing a dead producer's claim it finds there.
    ///
    /// # Errors
    /// `Topic` (`Corrupt`), `InvalidArgument` for a partition out of range.
    pub fn read(&self, p: u32, offset: u64, out: &mut Vec<u8>) -> Result<Read> {
        let part = self.partition(p)?;
        let read = part.read(offset, out).map_err(|e| self.layout_error(e))?;
        if let Read::Pending(Blocker::Claimed { owner, .. }) = read {
            let holder = self.ctrl().holder_of(owner);
            if holder == 0 || is_dead(holder) {
                self.repair_if_dead(holder)?;
                return part.read(offset, out).map_err(|e| self.layout_error(e));
            }
        }
        Ok(read)
    }

    /// Next offset to append in partition `p`.
    ///
    /// # Errors
    /// `InvalidArgument` for a partition out of range.
    pub fn head(&self, p: u32) -> Result<u64> {
        Ok(self.partition(p)?.tail())
    }

    /// Oldest offset retained in partition `p`.
    ///
    /// # Errors
    /// `InvalidArgument` for a partition out of range.
    pub fn tail(&self, p: u32) -> Result<u64> {
        Ok(self.partition(p)?.oldest())
    }

    /// Sleeps until a record may have been appended past `positions`
    /// (`(partition, offset)` pairs) or `deadline` passes (at most a
    /// liveness period, so a caller re-checks for dead producers).
    pub(crate) fn wait_for_data(&self, positions: &[(u32, u64)], deadline: Option<Instant>) {
        let member = match self.member() {
            Ok(m) => m,
            Err(_) => return std::thread::sleep(LIVENESS_PERIOD),
        };
        let parts: Vec<_> = positions
            .iter()
            .take(8)
            .filter_map(|&(p, at)| Some((self.partition(p).ok()?, at)))
            .collect();
        if parts.is_empty() {
            return;
        }
        let points: Vec<_> = parts.iter().map(|(p, _)| p.data_wait_point()).collect();
        let slice = Instant::now() + LIVENESS_PERIOD;
        let until = deadline.map_or(slice, |d| d.min(slice));
        wait_any(&LinuxFutex, &points, member.waiter(), Some(until), || {
            parts.iter().any(|(p, at)| !p.pending(*at))
        });
    }

    /// Consumer group `name`'s entry, added if new.
    pub(crate) fn group(&self, name: &str) -> Result<GroupId> {
        self.ctrl()
            .group(name, me(), is_dead)
            .map_err(|e| self.layout_error(e))
    }

    /// Records this process as a member of `group` and makes the group
    /// hold producers back (backpressure).
    ///
    /// # Errors
    /// `Topic(AdminBusy)` if a live process held the admin lock for a
    /// second.
    pub(crate) fn join(&self, group: GroupId) -> Result<()> {
        let recorded = self
            .ctrl()
            .enter(group, me(), is_dead, unix_time_ms(), &self.all())
            .map_err(|e| self.layout_error(e))?;
        if !recorded {
            tracing::warn!(
                topic = %self.name,
                "every member entry of the group is held by a live process; \
                 this member keeps the group holding only while it polls"
            );
        }
        Ok(())
    }

    /// Whether `group` holds producers back now (always true when the
    /// topic overwrites: nothing to hold).
    pub(crate) fn holds(&self, group: GroupId) -> bool {
        self.geo.overflow != Overflow::Backpressure
            || self.ctrl().holding() & (1 << group.index()) != 0
    }

    /// Removes one membership of this process from `group`.
    pub(crate) fn leave(&self, group: GroupId) {
        self.ctrl().leave(group, me());
    }

    /// `group`'s committed offset in partition `p`.
    pub(crate) fn cursor(&self, group: GroupId, p: u32) -> Result<u64> {
        Ok(self.partition(p)?.cursor(group))
    }

    /// Commits `offset` for `group` in partition `p`.
    pub(crate) fn commit(&self, group: GroupId, p: u32, offset: u64) -> Result<()> {
        self.partition(p)?.commit(group, offset, &LinuxFutex);
        self.ctrl().touch(group, unix_time_ms());
        Ok(())
    }

    /// Joins (or finds) member `name` of `group`; see
    /// [`TopicControl::claim_member`].
    pub(crate) fn claim_member(
        &self,
        group: GroupId,
        name: &str,
        session_ms: u64,
    ) -> Result<(MemberId, Vec<Owned>)> {
        self.ctrl()
            .claim_member(
                group,
                name,
                me(),
                unix_time_ms(),
                session_ms,
                is_dead,
                &self.all(),
            )
            .map_err(|e| self.layout_error(e))
    }

    /// A heartbeat of `member`; the group's generation.
    pub(crate) fn heartbeat(&self, group: GroupId, member: MemberId) -> Result<u64> {
        self.ctrl()
            .heartbeat(group, member, me(), unix_time_ms())
            .map_err(|e| self.layout_error(e))
    }

    /// `group`'s generation (bumped by every rebalance).
    pub(crate) fn generation(&self, group: GroupId) -> u64 {
        self.ctrl().generation(group)
    }

    /// Rebalances `group` if it needs it: a member dead or silent past its
    /// session timeout (evicted), a partition owned by no live member, or
    /// a rebalance cut short. `None` when it did not.
    ///
    /// # Errors
    /// `Topic(AdminBusy)` if a live process held the admin lock for a
    /// second.
    pub fn evict_members(&self, group: GroupId) -> Result<Option<Rebalance>> {
        self.ctrl()
            .evict_members(group, me(), unix_time_ms(), is_dead, &self.all())
            .map_err(|e| self.layout_error(e))
    }

    /// [`Topic::evict_members`] for every group (the supervisor's call
    /// when a process died). Returns the rebalances made.
    ///
    /// # Errors
    /// The first group's failure (`AdminBusy`, say); the groups after it
    /// are still looked at.
    pub fn evict_all_groups(&self) -> Result<u64> {
        let mut made = 0;
        let mut first = None;
        for (group, _) in self.ctrl().groups() {
            match self.evict_members(group) {
                Ok(done) => made += u64::from(done.is_some()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(made), Err)
    }

    /// Removes `member` from `group` and rebalances.
    pub(crate) fn leave_member(&self, group: GroupId, member: MemberId) -> Result<()> {
        self.ctrl()
            .leave_member(group, member, me(), unix_time_ms(), is_dead, &self.all())
            .map_err(|e| self.layout_error(e))
    }

    /// The partitions `member` owns now.
    pub(crate) fn assignment(&self, group: GroupId, member: MemberId) -> Result<Vec<Owned>> {
        self.ctrl()
            .assignment(group, member, &self.all())
            .map_err(|e| self.layout_error(e))
    }

    /// Commits `offset` in the partition `owned` names, if still owned.
    pub(crate) fn commit_owned(&self, group: GroupId, owned: Owned, offset: u64) -> Result<()> {
        let p = self.partition(owned.partition as u32)?;
        self.ctrl()
            .commit_owned(group, &p, owned, offset, &LinuxFutex)
            .map_err(|e| self.layout_error(e))?;
        self.ctrl().touch(group, unix_time_ms());
        Ok(())
    }

    /// Notes that a member of `group` polled.
    pub(crate) fn touch(&self, group: GroupId) {
        self.ctrl().touch(group, unix_time_ms());
    }

    /// Unpublished claims in progress, by partition (for the supervisor's
    /// watch of stopped producers).
    pub fn claims(&self) -> Vec<(u32, ClaimSeen)> {
        self.all()
            .iter()
            .enumerate()
            .flat_map(|(p, part)| part.claims().into_iter().map(move |c| (p as u32, c)))
            .collect()
    }

    /// Whether this process opened the handle (not a parent it was
    /// forked from).
    pub(crate) fn opened_here(&self) -> bool {
        self.generation == fork_generation()
    }

    /// The holder token of the topic's admin lock (0 when free).
    pub fn admin_holder(&self) -> u64 {
        self.ctrl().admin_holder()
    }

    /// The holder token of a claim's owner (0 if unknown).
    pub fn holder_of(&self, claim: &ClaimSeen) -> u64 {
        self.ctrl().holder_of(claim.owner)
    }

    /// Shape, positions, groups and counters.
    pub fn describe(&self) -> TopicDescription {
        let ctrl = self.ctrl();
        let params = ctrl.params();
        let parts = self.all();
        let holding = ctrl.holding();
        TopicDescription {
            name: self.name.clone(),
            lease_id: self.lease_id(),
            capacity: self.geo.capacity,
            stride: self.geo.stride,
            overflow: self.geo.overflow,
            group_retention_ms: params.group_retention_ms,
            participants: ctrl.participants(),
            repairs: ctrl.repairs(),
            groups_released: ctrl.groups_released(),
            partitions: parts
                .iter()
                .map(|p| {
                    let stats = p.stats();
                    PartitionDescription {
                        head: stats.tail,
                        tail: stats.oldest,
                        stats,
                    }
                })
                .collect(),
            groups: ctrl
                .groups()
                .into_iter()
                .map(|(id, name)| GroupDescription {
                    name,
                    holding: holding & (1 << id.index()) != 0,
                    live_members: ctrl
                        .members(id)
                        .into_iter()
                        .filter(|&t| !is_dead(t))
                        .count(),
                    last_active_ms: ctrl.last_active_ms(id),
                    committed: parts.iter().map(|p| p.cursor(id)).collect(),
                    coordination: ctrl.coord_stats(id),
                    members: ctrl
                        .group_members(id)
                        .into_iter()
                        .map(|m| MemberDescription {
                            pid: crate::process::ProcessId::unpack(m.token).pid,
                            partitions: parts
                                .iter()
                                .enumerate()
                                .filter(|(_, p)| ctrl.owner(id, p) == Some(m.id.slot()))
                                .map(|(i, _)| i as u32)
                                .collect(),
                            name: m.name,
                            heartbeat_ms: m.heartbeat_ms,
                            session_ms: m.session_ms,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        if let Some((generation, m)) = self.member.get()
            && *generation == fork_generation()
        {
            let cut_short = self.cut_short.load(Ordering::Relaxed);
            self.ctrl()
                .detach(m, me(), &self.all(), cut_short, &LinuxFutex);
        }
    }
}

/// Marks an append cut short if dropped while unwinding (forgotten when
/// the append returns).
struct CutShort<'a>(&'a AtomicBool);

impl Drop for CutShort<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The end of the next sleep slice before `deadline`; `None` once it has
/// passed.
fn slice_until(deadline: Option<Instant>) -> Option<Instant> {
    let now = Instant::now();
    if deadline.is_some_and(|d| now >= d) {
        return None;
    }
    let slice = now + LIVENESS_PERIOD;
    Some(deadline.map_or(slice, |d| d.min(slice)))
}

/// The name whose file holds `lease_id`, if any.
fn find_name(instance: &str, lease_id: u64) -> Option<String> {
    let dir = InstancePaths::new(instance)
        .ok()?
        .runtime_dir()
        .join("topics");
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| validate_name(n).is_ok())
        .find(|n| read_lease_id(&dir, n).ok().flatten() == Some(lease_id))
}

/// Layout constants callers may want.
pub use layout::{GROUP_NAME_MAX, MAX_PARTITIONS, MEMBER_NAME_MAX};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_name("object-events").is_ok());
        assert!(validate_name("a.b_c-9").is_ok());
        for bad in ["", ".hidden", "a/b", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}

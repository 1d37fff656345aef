//! The supervisor's state and its answers to control requests.
//!
//! The state here is authoritative; the registry segment mirrors it for
//! readers that do not ask (`grafos status`, workers checking a block
//! lease) and for a restarted supervisor, which adopts the leases it finds
//! there. Nothing read back from shared memory is trusted without checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use grafos_worker::FabricError;

use crate::group::{Group, read_status};
use crate::topology::Topology;
use grafos_worker::collections::map::FabricHashMap;
use grafos_worker::collections::queue::{FabricQueue, QueueInspector};
use grafos_worker::control::{
    BLOCK_SIZE, ControlError, LeaseGrant, LeaseKind, Reply, Request, decode, encode,
};
use grafos_worker::futex::LinuxFutex;
use grafos_worker::host::unix_time_ms;
use grafos_worker::instance::InstancePaths;
use grafos_worker::layout::header::{Expect, FenceState, FenceWord, SegmentKind, TypeDescriptor};
use grafos_worker::layout::queue::QueueError;
use grafos_worker::layout::registry::{
    Counter, InstanceCounters, LeaseInfo, MAX_LEASES, MAX_PARTICIPANTS, Registry, lease_kind,
    lease_state,
};
use grafos_worker::layout::wait::Futex;
use grafos_worker::mq::topic::Topic;
use grafos_worker::participant::{liveness_file, liveness_locked};
use grafos_worker::process::ProcessId;
use grafos_worker::registry::Mapped;
use grafos_worker::segment::{Segment, SegmentSpec, list_segments, open_if_kind, unlink_object};

/// Longest lease a request may ask for (a week): a lease outlives its
/// holders until its deadline, so this bounds how long a crashed holder
/// can pin budget.
pub const MAX_LEASE_SECS: u64 = 7 * 24 * 3600;
/// Lease ids and incarnations stay below this, so `+ 1` never overflows
/// and a scribbled registry cannot push them to the end of the range.
const MAX_ID: u64 = 1 << 62;
/// Most holds one attach request may register.
const MAX_HOLDS_PER_LEASE: u32 = 1 << 20;
const PAGE: u64 = 4096;

/// How a supervisor is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Shared-memory budget in bytes.
    pub pool_size: u64,
    /// Block-storage budget in bytes.
    pub block_pool_size: u64,
    /// Where block leases' files go.
    pub data_dir: PathBuf,
    /// How long an expired lease stays readable.
    pub grace: Duration,
    /// A queue claim held longer than this by a stopped participant or
    /// worker gets its holder killed (and repaired): a stopped claimer
    /// must not stop a queue.
    pub claim_age_limit: Duration,
}

/// How often queues are scanned for stuck claims.
const CLAIM_SCAN_PERIOD: Duration = Duration::from_millis(500);

/// What a new supervisor does with the workers a dead one left running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Takeover {
    /// Supervise them (restart the dead by their rules).
    Supervise,
    /// Watch them only, to stop them.
    StopOnly,
}

/// Who is on the other end of a control connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    /// The process, from the kernel (`SO_PEERPIDFD`); `None` if unknown.
    pub process: Option<ProcessId>,
    /// Its incarnation once it attached.
    pub incarnation: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Expired,
    Poisoned,
    Unlinked,
}

impl State {
    fn word(self) -> u64 {
        match self {
            State::Active => lease_state::ACTIVE,
            State::Expired => lease_state::EXPIRED,
            State::Poisoned => lease_state::POISONED,
            State::Unlinked => lease_state::UNLINKED,
        }
    }
}

#[derive(Debug)]
struct Lease {
    row: usize,
    kind: LeaseKind,
    bytes: u64,
    deadline_ms: u64,
    state: State,
    ended_ms: u64,
    /// Holding participants and how many handles each has.
    holders: BTreeMap<u64, u32>,
    /// Adopted from a dead supervisor: processes may map it that have not
    /// attached again, so it is kept for the whole grace period after it
    /// ends, holders or not.
    unknown_holders: bool,
    /// The mapped segment of a memory lease (to move its fence word).
    segment: Option<Segment>,
}

impl Lease {
    /// Holds, as the registry shows them.
    fn hold_count(&self) -> u64 {
        self.holders.values().map(|&n| u64::from(n)).sum()
    }
}

#[derive(Debug)]
struct Participant {
    row: usize,
    process: ProcessId,
}

/// What a participant's end was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It closed its connection and lives on.
    Detached,
    /// Its process is gone.
    Died,
}

/// The supervisor of one instance.
pub struct Supervisor {
    paths: InstancePaths,
    config: Config,
    token: u64,
    registry: Mapped<Registry>,
    counters: Mapped<InstanceCounters>,
    leases: BTreeMap<u64, Lease>,
    participants: BTreeMap<u64, Participant>,
    pool_used: u64,
    block_used: u64,
    /// Allocators and row maps are ours; the registry only mirrors them
    /// (another process may scribble on it).
    next_lease_id: u64,
    next_incarnation: u64,
    lease_rows: BTreeSet<usize>,
    participant_rows: BTreeSet<usize>,
    /// The workers `grafos run` started, if any.
    group: Option<Group>,
    /// Claims seen in progress, by queue, slot and state word, with when
    /// each was first seen.
    claims_seen: BTreeMap<(String, u64, u64), Instant>,
    next_claim_scan: Instant,
    /// Queues the claim watch keeps mapped, by object name.
    watched_queues: BTreeMap<String, QueueInspector>,
    /// Stuck claimers already killed (packed identities).
    stuck_killed: BTreeSet<u64>,
    /// Hash maps in memory leases, kept mapped by object name.
    watched_maps: BTreeMap<String, FabricHashMap>,
    /// Topics in memory leases, kept mapped by object name.
    watched_topics: BTreeMap<String, Topic>,
    /// Lease segments seen holding neither a map nor a topic, with when
    /// first seen (one made a moment ago may not be set up yet: looked at
    /// again for a while).
    not_maps: BTreeMap<String, Instant>,
    /// Pins seen holding reuse back, by map, slot and pin word, with when
    /// each was first seen.
    pins_seen: BTreeMap<(String, usize, u64), Instant>,
    /// Map writer locks seen held, by map, with the holder and when it was
    /// first seen holding.
    locks_seen: BTreeMap<String, (u64, Instant)>,
    shutdown_requested: bool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("instance", &self.paths.instance())
            .field("leases", &self.leases.len())
            .field("participants", &self.participants.len())
            .finish()
    }
}

impl Supervisor {
    /// Sets up the instance's segments and data dir, adopting the leases
    /// and workers of a dead predecessor if it left them (its dead workers
    /// are restarted by their rules). The caller holds the instance's
    /// supervisor lock.
    ///
    /// # Errors
    /// If a segment or the data dir cannot be made.
    pub fn start(paths: InstancePaths, config: Config) -> Result<Supervisor, FabricError> {
        Supervisor::boot(paths, config, Takeover::Supervise)
    }

    /// As [`Supervisor::start`], for taking an instance down: a dead
    /// predecessor's workers are adopted to be stopped, none restarted.
    ///
    /// # Errors
    /// As [`Supervisor::start`].
    pub fn start_to_stop(paths: InstancePaths, config: Config) -> Result<Supervisor, FabricError> {
        Supervisor::boot(paths, config, Takeover::StopOnly)
    }

    fn boot(
        paths: InstancePaths,
        config: Config,
        takeover: Takeover,
    ) -> Result<Supervisor, FabricError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| FabricError::Io {
            op: "mkdir",
            target: config.data_dir.display().to_string(),
            source,
        })?;
        let mut supervisor = match Mapped::<Registry>::open(&paths.registry(), None) {
            Ok(registry) => Supervisor::adopt(paths, config, registry)?,
            Err(FabricError::NotFound(_)) => Supervisor::fresh(paths, config)?,
            Err(e) => {
                tracing::warn!("replacing an unreadable registry: {e}");
                let _ = Segment::unlink(&paths.registry());
                let _ = Segment::unlink(&paths.counters());
                Supervisor::fresh(paths, config)?
            }
        };
        let control = &supervisor.registry.get().control;
        control
            .supervisor
            .store(ProcessId::current().pack(), Relaxed);
        control
            .pool_size
            .store(supervisor.config.pool_size, Relaxed);
        control
            .block_pool_size
            .store(supervisor.config.block_pool_size, Relaxed);
        control
            .grace_ms
            .store(supervisor.config.grace.as_millis() as u64, Relaxed);
        supervisor.publish_budget();
        supervisor.tick(unix_time_ms());
        // After the first tick: restarts the takeover plans wait for the
        // event loop, once the control socket is there for the workers.
        supervisor.adopt_group(takeover);
        Ok(supervisor)
    }

    /// Where the running topology is kept (text and directory), so a
    /// restarted supervisor can take its workers over.
    fn topology_file(&self) -> PathBuf {
        self.paths.runtime_dir().join("topology.json")
    }

    fn workers_file(&self) -> PathBuf {
        self.paths.runtime_dir().join("workers.json")
    }

    /// Takes over the workers a dead supervisor was running, if any.
    fn adopt_group(&mut self, takeover: Takeover) {
        let Some(before) = read_status(&self.workers_file()) else {
            return;
        };
        if before.state == "stopped" {
            return;
        }
        let saved: Option<(String, String)> = std::fs::read(self.topology_file())
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        let Some((text, dir)) = saved else {
            tracing::warn!("workers.json without its topology: its workers are not taken over");
            return;
        };
        match Topology::parse(&text, Path::new(&dir)) {
            Ok(topology) => {
                self.group = Some(Group::adopt(
                    topology,
                    self.paths.instance(),
                    self.workers_file(),
                    &before,
                    takeover == Takeover::Supervise,
                ));
            }
            Err(e) => tracing::warn!("the saved topology no longer parses ({e}); not taken over"),
        }
    }

    fn fresh(paths: InstancePaths, config: Config) -> Result<Supervisor, FabricError> {
        remove_leftovers(&paths, &config.data_dir);
        let token = random_token();
        let _ = Segment::unlink(&paths.counters());
        let counters = Mapped::create(&paths.counters(), token)?;
        let registry = match Mapped::<Registry>::create(&paths.registry(), token) {
            Ok(r) => r,
            Err(e) => {
                let _ = Segment::unlink(&paths.counters());
                return Err(e);
            }
        };
        Ok(Supervisor::new(paths, config, token, registry, counters))
    }

    fn new(
        paths: InstancePaths,
        config: Config,
        token: u64,
        registry: Mapped<Registry>,
        counters: Mapped<InstanceCounters>,
    ) -> Supervisor {
        Supervisor {
            paths,
            config,
            token,
            registry,
            counters,
            leases: BTreeMap::new(),
            participants: BTreeMap::new(),
            pool_used: 0,
            block_used: 0,
            next_lease_id: 1,
            next_incarnation: 1,
            lease_rows: BTreeSet::new(),
            participant_rows: BTreeSet::new(),
            group: None,
            claims_seen: BTreeMap::new(),
            next_claim_scan: Instant::now(),
            watched_queues: BTreeMap::new(),
            watched_maps: BTreeMap::new(),
            watched_topics: BTreeMap::new(),
            not_maps: BTreeMap::new(),
            pins_seen: BTreeMap::new(),
            locks_seen: BTreeMap::new(),
            stuck_killed: BTreeSet::new(),
            shutdown_requested: false,
        }
    }

    /// Takes over a dead supervisor's registry: its leases keep their
    /// deadlines; its participants must attach again. Every row is checked
    /// (state, kind, id, size against the budget and against the segment
    /// or file itself); a row that fails is dropped with its storage.
    fn adopt(
        paths: InstancePaths,
        config: Config,
        registry: Mapped<Registry>,
    ) -> Result<Supervisor, FabricError> {
        let token = registry.segment().fields().instance_token;
        let counters = match Mapped::open(&paths.counters(), Some(token)) {
            Ok(c) => c,
            Err(_) => {
                let _ = Segment::unlink(&paths.counters());
                Mapped::create(&paths.counters(), token)?
            }
        };
        let mut supervisor = Supervisor::new(paths, config, token, registry, counters);
        let reg = supervisor.registry.get();
        for row in &reg.participants {
            row.clear();
        }
        let control = &reg.control;
        let next_lease_id = control.next_lease_id.load(Relaxed).clamp(1, MAX_ID);
        let next_incarnation = control.next_incarnation.load(Relaxed).clamp(1, MAX_ID);
        let rows: Vec<_> = reg.leases().collect();
        let mut max_id = 0;
        for info in rows {
            match supervisor.adopt_lease(&info) {
                Ok(()) => max_id = max_id.max(info.lease_id),
                Err(reason) => {
                    tracing::warn!(
                        lease = info.lease_id,
                        row = info.row,
                        "not adopted: {reason}"
                    );
                    supervisor.registry.get().leases[info.row].clear();
                    supervisor.remove_storage_of(info.lease_id);
                }
            }
        }
        supervisor.next_lease_id = next_lease_id.max(max_id + 1);
        supervisor.next_incarnation = next_incarnation;
        supervisor.publish_allocators();
        tracing::info!(
            leases = supervisor.leases.len(),
            "adopted the registry of a previous supervisor"
        );
        Ok(supervisor)
    }

    fn adopt_lease(&mut self, info: &LeaseInfo) -> Result<(), String> {
        let state = match info.state {
            lease_state::ACTIVE => State::Active,
            lease_state::EXPIRED => State::Expired,
            lease_state::POISONED => State::Poisoned,
            lease_state::UNLINKED => State::Unlinked,
            other => return Err(format!("unknown state {other}")),
        };
        if info.lease_id == 0 || info.lease_id >= MAX_ID || self.leases.contains_key(&info.lease_id)
        {
            return Err("bad or duplicate id".into());
        }
        let kind = match info.kind {
            lease_kind::MEM => LeaseKind::Mem,
            lease_kind::BLOCK => LeaseKind::Block,
            other => return Err(format!("unknown kind {other}")),
        };
        let (capacity, used) = match kind {
            LeaseKind::Mem => (self.config.pool_size, self.pool_used),
            LeaseKind::Block => (self.config.block_pool_size, self.block_used),
        };
        if info.bytes == 0 || !info.bytes.is_multiple_of(PAGE) || info.bytes > capacity - used {
            return Err(format!("{} bytes do not fit the budget", info.bytes));
        }
        let segment = match (kind, state) {
            (_, State::Unlinked) => None,
            (LeaseKind::Mem, _) => Some(self.open_lease_segment(info.lease_id, info.bytes)?),
            (LeaseKind::Block, _) => {
                let path = self.block_path(info.lease_id);
                let len = std::fs::metadata(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .len();
                if len != info.bytes {
                    return Err(format!(
                        "{} holds {len} bytes, not {}",
                        path.display(),
                        info.bytes
                    ));
                }
                None
            }
        };
        match kind {
            LeaseKind::Mem => self.pool_used += info.bytes,
            LeaseKind::Block => self.block_used += info.bytes,
        }
        self.registry.get().leases[info.row]
            .holders
            .store(0, Relaxed);
        self.lease_rows.insert(info.row);
        self.leases.insert(
            info.lease_id,
            Lease {
                row: info.row,
                kind,
                bytes: info.bytes,
                deadline_ms: info.deadline_ms,
                state,
                ended_ms: info.ended_ms,
                holders: BTreeMap::new(),
                unknown_holders: true,
                segment,
            },
        );
        Ok(())
    }

    /// Removes the segment and file a lease id could have.
    fn remove_storage_of(&self, lease_id: u64) {
        let _ = Segment::unlink(&self.paths.lease_segment(lease_id));
        let _ = std::fs::remove_file(self.block_path(lease_id));
    }

    fn open_lease_segment(&self, lease_id: u64, bytes: u64) -> Result<Segment, String> {
        let segment = Segment::open(
            &self.paths.lease_segment(lease_id),
            &Expect {
                instance_token: Some(self.token),
                ..Expect::default()
            },
        )
        .map_err(|e| e.to_string())?;
        if segment.fields().lease_id != lease_id {
            return Err("segment names another lease".into());
        }
        if segment.body_len() != bytes {
            return Err(format!(
                "segment holds {} bytes, not {bytes}",
                segment.body_len()
            ));
        }
        Ok(segment)
    }

    /// The instance's paths.
    pub fn paths(&self) -> &InstancePaths {
        &self.paths
    }

    /// The instance counters.
    pub fn counters(&self) -> &InstanceCounters {
        self.counters.get()
    }

    /// Answers one raw control message from `peer` at `now_ms`. Never panics on any
    /// input: a message that fails to decode gets a `Malformed` or
    /// `Version` error reply and a log line.
    pub fn handle_message(&mut self, peer: &mut Peer, message: &[u8], now_ms: u64) -> Vec<u8> {
        let reply = match decode::<Request>(message) {
            Ok(request) => self.handle(peer, request, now_ms),
            Err(e) => {
                self.counters().add(Counter::BadMessages, 1);
                tracing::warn!(bytes = message.len(), "refused a control message: {e:?}");
                Reply::Error(e)
            }
        };
        encode(&reply)
    }

    /// Answers one request from `peer` at `now_ms`.
    pub fn handle(&mut self, peer: &mut Peer, request: Request, now_ms: u64) -> Reply {
        // A participant can end while its connection still sends (the
        // connection is closed right after): its incarnation is gone.
        if let Some(incarnation) = peer.incarnation
            && !self.participants.contains_key(&incarnation)
        {
            peer.incarnation = None;
        }
        let result = match request {
            Request::Ping => Ok(Reply::Pong {
                pid: std::process::id(),
            }),
            Request::Attach { holds } => self.attach(peer, &holds, now_ms),
            Request::AcquireMem {
                min_bytes,
                lease_secs,
            } => attached(peer)
                .and_then(|me| self.acquire(me, LeaseKind::Mem, min_bytes, lease_secs, now_ms)),
            Request::AcquireBlock {
                min_blocks,
                lease_secs,
            } => attached(peer).and_then(|me| {
                let bytes = min_blocks.checked_mul(BLOCK_SIZE).ok_or_else(|| {
                    ControlError::Invalid(format!("{min_blocks} blocks overflow"))
                })?;
                self.acquire(me, LeaseKind::Block, bytes, lease_secs, now_ms)
            }),
            Request::Open { lease_id } => attached(peer).and_then(|me| self.open(me, lease_id)),
            Request::Renew {
                lease_id,
                lease_secs,
            } => attached(peer).and_then(|me| self.renew(me, lease_id, lease_secs, now_ms)),
            Request::Release { lease_id } => {
                attached(peer).and_then(|me| self.release(me, lease_id, true, now_ms))
            }
            Request::Unhold { lease_id } => {
                attached(peer).and_then(|me| self.release(me, lease_id, false, now_ms))
            }
            Request::Expire { lease_id } => self.end_by_hand(lease_id, State::Expired, now_ms),
            Request::Poison { lease_id } => self.end_by_hand(lease_id, State::Poisoned, now_ms),
            Request::Run { topology, dir } => self.run(&topology, &dir),
            Request::StopGroup => match &mut self.group {
                Some(group) => {
                    group.stop("stopped by request");
                    Ok(Reply::Done)
                }
                None => Err(ControlError::Invalid("no topology is running".into())),
            },
            Request::Kill { worker, signal } => match &self.group {
                Some(group) => group
                    .kill(&worker, signal)
                    .map(|_| Reply::Done)
                    .map_err(ControlError::Invalid),
                None => Err(ControlError::Invalid("no topology is running".into())),
            },
            Request::Shutdown => {
                self.shutdown_requested = true;
                if let Some(group) = &mut self.group {
                    group.stop("the instance is going down");
                }
                Ok(Reply::Done)
            }
        };
        result.unwrap_or_else(Reply::Error)
    }

    fn attach(
        &mut self,
        peer: &mut Peer,
        holds: &[(u64, u32)],
        now_ms: u64,
    ) -> Result<Reply, ControlError> {
        let process = peer
            .process
            .ok_or_else(|| ControlError::Failed("the kernel did not say who the peer is".into()))?;
        if let Some(incarnation) = peer.incarnation
            && let Some(participant) = self.participants.get(&incarnation)
        {
            return Ok(self.attached_reply(incarnation, participant.row));
        }
        let file = liveness_file(&self.paths, process);
        if liveness_locked(&file) != Some(true) {
            return Err(ControlError::Invalid(format!(
                "liveness file {} is not locked; attach with grafos_worker::participant::attach",
                file.display()
            )));
        }
        let row = free_row(&self.participant_rows, MAX_PARTICIPANTS).ok_or_else(|| {
            ControlError::Failed(format!("all {MAX_PARTICIPANTS} participant rows in use"))
        })?;
        if self.next_incarnation >= MAX_ID {
            return Err(ControlError::Failed("incarnations exhausted".into()));
        }
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.publish_allocators();
        self.participant_rows.insert(row);
        self.registry.get().participants[row].publish(incarnation, process.pack(), now_ms);
        self.participants
            .insert(incarnation, Participant { row, process });
        peer.incarnation = Some(incarnation);
        // A process attaching again (its supervisor restarted) keeps the
        // holds of its live handles.
        for &(lease_id, count) in holds {
            if let Some(lease) = self.leases.get_mut(&lease_id)
                && count > 0
            {
                let held = lease.holders.entry(incarnation).or_default();
                *held = held.saturating_add(count).min(MAX_HOLDS_PER_LEASE);
                self.registry.get().leases[lease.row]
                    .holders
                    .store(lease.hold_count(), Relaxed);
            }
        }
        self.counters().add(Counter::ParticipantsAttached, 1);
        tracing::info!(incarnation, pid = process.pid, "participant attached");
        Ok(self.attached_reply(incarnation, row))
    }

    /// Starts the workers of a topology, unless one is running.
    fn run(&mut self, text: &str, dir: &str) -> Result<Reply, ControlError> {
        if self.shutdown_requested {
            return Err(ControlError::Invalid("the instance is going down".into()));
        }
        if self.group.as_ref().is_some_and(|g| !g.is_stopped()) {
            return Err(ControlError::Invalid(
                "a topology is running already; `grafos run` ends it on Ctrl-C, `grafos down` too"
                    .into(),
            ));
        }
        let topology = Topology::parse(text, Path::new(dir)).map_err(ControlError::Invalid)?;
        let saved = serde_json::to_vec(&(text, dir)).expect("strings serialise");
        std::fs::write(self.topology_file(), saved)
            .map_err(|e| ControlError::Failed(format!("saving the topology: {e}")))?;
        tracing::info!(workers = topology.instances().len(), "starting a topology");
        self.group = Some(Group::start(
            topology,
            self.paths.instance(),
            self.workers_file(),
        ));
        Ok(Reply::Done)
    }

    /// The running group, if any (the event loop watches its pidfds).
    pub fn group(&mut self) -> Option<&mut Group> {
        self.group.as_mut()
    }

    /// Stops the workers (reverse order, SIGTERM, then SIGKILL after the
    /// grace period) and waits until they are gone, without serving (for
    /// `grafos down` with no supervisor running).
    pub fn stop_workers(&mut self) {
        let Some(group) = &mut self.group else {
            return;
        };
        group.stop("the instance is going down");
        // Every worker gets its grace period and then SIGKILL through its
        // pidfd, so this ends; the deadline is a last resort.
        let grace = self.config.grace.max(Duration::from_secs(60));
        let deadline = Instant::now() + grace * 16;
        while !group.is_stopped() {
            if Instant::now() >= deadline {
                tracing::error!(
                    "workers still running after {:?}; giving up on them",
                    grace * 16
                );
                return;
            }
            let exited: Vec<usize> = {
                let pidfds = group.pidfds();
                let mut fds: Vec<rustix::event::PollFd<'_>> = pidfds
                    .iter()
                    .map(|(_, fd)| {
                        rustix::event::PollFd::from_borrowed_fd(*fd, rustix::event::PollFlags::IN)
                    })
                    .collect();
                let wait = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                let _ = rustix::event::poll(&mut fds, Some(&wait));
                pidfds
                    .iter()
                    .zip(&fds)
                    .filter(|(_, fd)| !fd.revents().is_empty())
                    .map(|((i, _), _)| *i)
                    .collect()
            };
            for i in exited {
                group.child_exited(i);
            }
            group.tick();
        }
    }

    /// Whether the supervisor may exit: shutdown was asked for and no
    /// worker is left running.
    pub fn finished(&self) -> bool {
        self.shutdown_requested && self.group.as_ref().is_none_or(Group::is_stopped)
    }

    /// Asks for shutdown (a stop signal): workers are stopped first.
    pub fn request_shutdown(&mut self) {
        self.shutdown_requested = true;
        if let Some(group) = &mut self.group {
            group.stop("the supervisor was told to stop");
        }
    }

    fn attached_reply(&self, incarnation: u64, row: usize) -> Reply {
        Reply::Attached {
            incarnation,
            row: row as u64,
            instance_token: self.token,
        }
    }

    fn acquire(
        &mut self,
        me: u64,
        kind: LeaseKind,
        min_bytes: u64,
        lease_secs: u64,
        now_ms: u64,
    ) -> Result<Reply, ControlError> {
        check_ttl(lease_secs)?;
        let (capacity, used, pool_kind) = match kind {
            LeaseKind::Mem => (self.config.pool_size, self.pool_used, "memory"),
            LeaseKind::Block => (self.config.block_pool_size, self.block_used, "block"),
        };
        if min_bytes == 0 {
            return Err(ControlError::Invalid("a lease of zero bytes".into()));
        }
        let bytes = min_bytes.div_ceil(PAGE).saturating_mul(PAGE);
        if bytes > capacity {
            return Err(ControlError::Invalid(format!(
                "{min_bytes} bytes exceed the whole {pool_kind} pool ({capacity} bytes)"
            )));
        }
        if bytes > capacity - used {
            self.counters().add(Counter::BudgetRefusals, 1);
            return Err(ControlError::NoBudget {
                pool_kind: pool_kind.into(),
                requested: bytes,
                free: capacity - used,
                capacity,
            });
        }
        let row = free_row(&self.lease_rows, MAX_LEASES)
            .ok_or_else(|| ControlError::Failed(format!("all {MAX_LEASES} lease rows in use")))?;
        if self.next_lease_id >= MAX_ID {
            return Err(ControlError::Failed("lease ids exhausted".into()));
        }
        let lease_id = self.next_lease_id;
        self.next_lease_id += 1;
        self.publish_allocators();
        let segment = match kind {
            LeaseKind::Mem => Some(self.create_segment(lease_id, bytes)?),
            LeaseKind::Block => {
                self.create_block_file(lease_id, bytes)?;
                None
            }
        };
        let deadline_ms = now_ms + lease_secs * 1000;
        let lease = Lease {
            row,
            kind,
            bytes,
            deadline_ms,
            state: State::Active,
            ended_ms: 0,
            holders: BTreeMap::from([(me, 1)]),
            unknown_holders: false,
            segment,
        };
        let published = &self.registry.get().leases[row];
        published.publish(lease_id, kind_word(kind), bytes, deadline_ms);
        published.holders.store(1, Relaxed);
        self.lease_rows.insert(row);
        match kind {
            LeaseKind::Mem => self.pool_used += bytes,
            LeaseKind::Block => self.block_used += bytes,
        }
        self.publish_budget();
        self.counters().add(Counter::LeasesAcquired, 1);
        tracing::info!(
            lease_id,
            ?kind,
            bytes,
            lease_secs,
            holder = me,
            "lease granted"
        );
        let grant = self.grant(lease_id, &lease);
        self.leases.insert(lease_id, lease);
        Ok(Reply::Lease(grant))
    }

    fn create_segment(&self, lease_id: u64, bytes: u64) -> Result<Segment, ControlError> {
        let segment = Segment::create(
            &self.paths.lease_segment(lease_id),
            &SegmentSpec {
                kind: SegmentKind::Raw,
                body_len: bytes,
                lease_id,
                instance_token: self.token,
                payload: TypeDescriptor::BYTES,
            },
        )
        .map_err(|e| ControlError::Failed(e.to_string()))?;
        segment.activate();
        Ok(segment)
    }

    fn block_path(&self, lease_id: u64) -> PathBuf {
        self.config
            .data_dir
            .join(block_file_name(self.paths.instance(), lease_id))
    }

    fn create_block_file(&self, lease_id: u64, bytes: u64) -> Result<(), ControlError> {
        let path = self.block_path(lease_id);
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            ControlError::Failed(format!("{what} {}: {e}", path.display()))
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| failed("create", &e))?;
        let reserved =
            match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
                // A file system without fallocate: size it; a full disk then
                // shows as a write error instead of here.
                Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(bytes).map_err(|e| e.to_string()),
                other => other.map_err(|e| e.to_string()),
            };
        if let Err(e) = reserved {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(failed("fallocate", &e));
        }
        Ok(())
    }

    fn grant(&self, lease_id: u64, lease: &Lease) -> LeaseGrant {
        LeaseGrant {
            lease_id,
            kind: lease.kind,
            bytes: lease.bytes,
            deadline_ms: lease.deadline_ms,
            location: match lease.kind {
                LeaseKind::Mem => format!("lease.{lease_id}"),
                LeaseKind::Block => self.block_path(lease_id).display().to_string(),
            },
        }
    }

    fn live_lease(&mut self, lease_id: u64) -> Result<&mut Lease, ControlError> {
        let lease = self
            .leases
            .get_mut(&lease_id)
            .ok_or(ControlError::UnknownLease(lease_id))?;
        match lease.state {
            State::Active => Ok(lease),
            State::Poisoned => Err(ControlError::LeasePoisoned(lease_id)),
            State::Expired | State::Unlinked => Err(ControlError::LeaseExpired(lease_id)),
        }
    }

    fn open(&mut self, me: u64, lease_id: u64) -> Result<Reply, ControlError> {
        let lease = self.live_lease(lease_id)?;
        let held = lease.holders.entry(me).or_default();
        *held = held.saturating_add(1).min(MAX_HOLDS_PER_LEASE);
        let (row, holders) = (lease.row, lease.hold_count());
        self.registry.get().leases[row]
            .holders
            .store(holders, Relaxed);
        Ok(Reply::Lease(self.grant(lease_id, &self.leases[&lease_id])))
    }

    fn renew(
        &mut self,
        me: u64,
        lease_id: u64,
        lease_secs: u64,
        now_ms: u64,
    ) -> Result<Reply, ControlError> {
        check_ttl(lease_secs)?;
        let lease = self.live_lease(lease_id)?;
        if !lease.holders.contains_key(&me) {
            return Err(ControlError::Invalid(format!(
                "incarnation {me} does not hold lease {lease_id}; open it first"
            )));
        }
        lease.deadline_ms = now_ms + lease_secs * 1000;
        let (row, deadline_ms) = (lease.row, lease.deadline_ms);
        self.registry.get().leases[row]
            .deadline_ms
            .store(deadline_ms, Relaxed);
        self.counters().add(Counter::LeasesRenewed, 1);
        Ok(Reply::Renewed { deadline_ms })
    }

    /// Drops one of `me`'s holds; with `end_if_last`, a lease left with no
    /// holder ends (its budget comes back once it is unlinked).
    fn release(
        &mut self,
        me: u64,
        lease_id: u64,
        end_if_last: bool,
        now_ms: u64,
    ) -> Result<Reply, ControlError> {
        let lease = self
            .leases
            .get_mut(&lease_id)
            .ok_or(ControlError::UnknownLease(lease_id))?;
        let Some(held) = lease.holders.get_mut(&me) else {
            return Err(ControlError::Invalid(format!(
                "incarnation {me} does not hold lease {lease_id}"
            )));
        };
        *held -= 1;
        if *held == 0 {
            lease.holders.remove(&me);
        }
        let last = lease.holders.is_empty();
        let (row, holders) = (lease.row, lease.hold_count());
        self.registry.get().leases[row]
            .holders
            .store(holders, Relaxed);
        if end_if_last && last && lease.state == State::Active {
            self.counters().add(Counter::LeasesReleased, 1);
            self.end(lease_id, State::Expired, now_ms);
        }
        self.collect(now_ms);
        Ok(Reply::Done)
    }

    fn end_by_hand(
        &mut self,
        lease_id: u64,
        to: State,
        now_ms: u64,
    ) -> Result<Reply, ControlError> {
        let lease = self
            .leases
            .get(&lease_id)
            .ok_or(ControlError::UnknownLease(lease_id))?;
        match (lease.state, to) {
            (State::Active, _) | (State::Expired, State::Poisoned) => {
                self.end(lease_id, to, now_ms);
                tracing::info!(lease_id, state = ?to, "lease ended by hand");
                Ok(Reply::Done)
            }
            (State::Unlinked, _) => Err(ControlError::LeaseExpired(lease_id)),
            _ => Ok(Reply::Done),
        }
    }

    /// Moves a lease to `Expired` or `Poisoned`: registry row, fence word
    /// (sleepers on it are woken), counters.
    fn end(&mut self, lease_id: u64, to: State, now_ms: u64) {
        let lease = self
            .leases
            .get_mut(&lease_id)
            .expect("ending a known lease");
        lease.state = to;
        lease.ended_ms = now_ms;
        let row = &self.registry.get().leases[lease.row];
        row.ended_ms.store(now_ms, Relaxed);
        row.state.store(to.word(), Release);
        if let Some(segment) = &lease.segment {
            let fence_state = match to {
                State::Poisoned => FenceState::Poisoned,
                _ => FenceState::Expired,
            };
            let header = segment.header();
            loop {
                let now = header.fence();
                if now.state == fence_state || now.state == FenceState::Poisoned {
                    break;
                }
                let next = FenceWord {
                    generation: now.generation,
                    state: fence_state,
                };
                if header.transition(now, next).is_ok() {
                    break;
                }
            }
            LinuxFutex.wake_all(header.fence_futex());
        }
        self.counters().add(
            match to {
                State::Poisoned => Counter::LeasesPoisoned,
                _ => Counter::LeasesExpired,
            },
            1,
        );
    }

    /// One reaper pass at `now_ms`: moves a stopping worker group along,
    /// expires leases past their deadline,
    /// unlinks ended leases past their grace (or with no holder left), and
    /// gives back the budget of unlinked leases no live participant maps.
    /// (Deaths are seen by the event loop, through pidfds.)
    pub fn tick(&mut self, now_ms: u64) {
        if let Some(group) = &mut self.group {
            group.tick();
        }
        if Instant::now() >= self.next_claim_scan {
            self.watch_claims();
            self.next_claim_scan = Instant::now() + CLAIM_SCAN_PERIOD;
        }
        let due: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.state == State::Active && l.deadline_ms <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        for lease_id in due {
            tracing::info!(lease_id, "lease expired");
            self.end(lease_id, State::Expired, now_ms);
        }
        self.collect(now_ms);
        self.registry
            .get()
            .control
            .supervisor_heartbeat_ms
            .store(now_ms, Relaxed);
    }

    /// Unlinks ended leases past their grace or unheld, and frees the rows
    /// and budget of unlinked, unheld ones.
    fn collect(&mut self, now_ms: u64) {
        let grace = u64::try_from(self.config.grace.as_millis()).unwrap_or(u64::MAX);
        let mut freed = false;
        let ids: Vec<u64> = self.leases.keys().copied().collect();
        for lease_id in ids {
            let lease = &self.leases[&lease_id];
            let graced = lease.ended_ms.saturating_add(grace) <= now_ms;
            let unheld = lease.holders.is_empty() && !lease.unknown_holders;
            let ended = matches!(lease.state, State::Expired | State::Poisoned);
            if ended && (unheld || graced) {
                self.unlink(lease_id);
            }
            let lease = &self.leases[&lease_id];
            if lease.state == State::Unlinked
                && lease.holders.is_empty()
                && (!lease.unknown_holders || graced)
            {
                let lease = self.leases.remove(&lease_id).expect("listed");
                self.registry.get().leases[lease.row].clear();
                self.lease_rows.remove(&lease.row);
                match lease.kind {
                    LeaseKind::Mem => self.pool_used -= lease.bytes,
                    LeaseKind::Block => self.block_used -= lease.bytes,
                }
                freed = true;
            }
        }
        if freed {
            self.publish_budget();
        }
    }

    fn unlink(&mut self, lease_id: u64) {
        let path = self.block_path(lease_id);
        let lease = self
            .leases
            .get_mut(&lease_id)
            .expect("unlinking a known lease");
        let result = match lease.kind {
            LeaseKind::Mem => {
                lease.segment = None;
                Segment::unlink(&self.paths.lease_segment(lease_id))
            }
            LeaseKind::Block => remove_file(&path),
        };
        match result {
            Ok(()) | Err(FabricError::NotFound(_)) => {}
            Err(e) => tracing::warn!(lease_id, "unlink: {e}"),
        }
        lease.state = State::Unlinked;
        self.registry.get().leases[lease.row]
            .state
            .store(lease_state::UNLINKED, Release);
        self.counters().add(Counter::LeasesUnlinked, 1);
    }

    /// A participant detached or died: its row is freed, its holds are
    /// dropped, and if it died, every queue of the instance is repaired and
    /// its liveness file removed.
    pub fn participant_ended(&mut self, incarnation: u64, ending: Ending, now_ms: u64) {
        let Some(participant) = self.participants.remove(&incarnation) else {
            return;
        };
        self.registry.get().participants[participant.row].clear();
        self.participant_rows.remove(&participant.row);
        for lease in self.leases.values_mut() {
            if lease.holders.remove(&incarnation).is_some() {
                self.registry.get().leases[lease.row]
                    .holders
                    .store(lease.hold_count(), Relaxed);
            }
        }
        match ending {
            Ending::Detached => {
                self.counters().add(Counter::ParticipantsDetached, 1);
                tracing::info!(incarnation, "participant detached");
            }
            Ending::Died => {
                self.counters().add(Counter::ParticipantsDied, 1);
                tracing::warn!(
                    incarnation,
                    pid = participant.process.pid,
                    "participant died"
                );
                self.repair_queues();
                if let Ok(objects) = list_segments(self.paths.instance()) {
                    self.refresh_maps(&objects);
                }
                self.repair_maps();
                self.repair_topics();
                let _ = std::fs::remove_file(liveness_file(&self.paths, participant.process));
            }
        }
        self.collect(now_ms);
    }

    /// Looks at every claim in progress in the instance's queues: a claim
    /// whose holder is dead gets repaired; one held past the claim-age
    /// limit by a stopped participant or worker (SIGSTOP, a debugger) gets
    /// its holder killed, and repaired on a later pass. Running holders
    /// are never killed: a slow claimer is not a stuck one.
    fn watch_claims(&mut self) {
        let Ok(objects) = list_segments(self.paths.instance()) else {
            return;
        };
        // Keep queue mappings from scan to scan (no page faults after the
        // first), dropping those whose segment is gone.
        let mut mapped = std::mem::take(&mut self.watched_queues);
        mapped.retain(|object, _| objects.contains(object));
        let now = Instant::now();
        let mut seen = BTreeMap::new();
        let mut repair = false;
        for object in &objects {
            if !mapped.contains_key(object) {
                let opened = open_if_kind(self.paths.instance(), object, SegmentKind::Queue);
                match opened.map(|queue| queue.and_then(FabricQueue::inspector)) {
                    Some(Ok(queue)) => {
                        mapped.insert(object.clone(), queue);
                    }
                    _ => continue,
                }
            }
            let claims = mapped[object].claims();
            for claim in claims.into_iter().filter(|c| c.holder != 0) {
                let key = (object.clone(), claim.slot, claim.word);
                let first = self.claims_seen.get(&key).copied().unwrap_or(now);
                seen.insert(key, first);
                let holder = ProcessId::unpack(claim.holder);
                if !holder.is_alive() {
                    repair = true;
                } else if now.duration_since(first) >= self.config.claim_age_limit
                    && holder.is_stopped()
                    && self.is_ours(holder)
                {
                    self.kill_stuck(
                        holder,
                        object,
                        now.duration_since(first),
                        StuckKind::Claimer,
                    );
                }
            }
        }
        self.watched_queues = mapped;
        if repair {
            self.repair_queues();
        }
        self.watch_pins(&objects);
        self.watch_topic_claims(now, &mut seen);
        self.claims_seen = seen;
    }

    /// The claim watch over topics (mapped by `watch_pins`' refresh): a
    /// producer dead holding a claim gets it repaired; one seen stopped
    /// holding it, scan after scan, past the claim-age limit gets killed
    /// (and repaired on a later pass), and so does a process seen stopped
    /// holding a topic's admin lock that long. Claims seen are added to
    /// `seen`, keyed by topic object and partition; the time counts only
    /// while the holder is seen stopped (a slow producer is not a stuck
    /// one).
    fn watch_topic_claims(
        &mut self,
        now: Instant,
        seen: &mut BTreeMap<(String, u64, u64), Instant>,
    ) {
        let mut stuck = Vec::new();
        let mut repair = BTreeSet::new();
        for (object, topic) in &self.watched_topics {
            let mut held = Vec::new();
            for (partition, claim) in topic.claims() {
                held.push((
                    format!("{object}/{partition}"),
                    claim.slot,
                    claim.word,
                    topic.holder_of(&claim),
                ));
            }
            let admin = topic.admin_holder();
            if admin != 0 {
                held.push((format!("{object}/admin"), 0, admin, admin));
            }
            for (key, slot, word, holder) in held {
                if holder == 0 {
                    repair.insert(object.clone());
                    continue;
                }
                let holder = ProcessId::unpack(holder);
                if !holder.is_alive() {
                    repair.insert(object.clone());
                    continue;
                }
                if !holder.is_stopped() {
                    continue;
                }
                let key = (key, slot, word);
                let first = self.claims_seen.get(&key).copied().unwrap_or(now);
                seen.insert(key, first);
                if now.duration_since(first) >= self.config.claim_age_limit {
                    stuck.push((holder, object.clone(), now.duration_since(first)));
                }
            }
        }
        for (holder, object, held) in stuck {
            if self.is_ours(holder) {
                self.kill_stuck(holder, &object, held, StuckKind::Claimer);
            }
        }
        for object in repair {
            self.repair_topic(&object);
        }
    }

    /// Repairs the dead producers of every topic seen at the last refresh.
    fn repair_topics(&self) {
        for object in self.watched_topics.keys() {
            self.repair_topic(object);
        }
    }

    /// Repairs the dead producers of topic `object` (mapped).
    fn repair_topic(&self, object: &str) {
        let Some(topic) = self.watched_topics.get(object) else {
            return;
        };
        match topic.repair_dead() {
            Ok(tombed) => self.counters().add(Counter::TopicClaimsRepaired, tombed),
            Err(FabricError::Topic { .. } | FabricError::LeaseExpired(_)) => {}
            Err(e) => tracing::warn!(topic = %object, "topic repair: {e}"),
        }
        // A dead member's partitions go to the group's others now, not
        // when one of them next looks.
        match topic.evict_all_groups() {
            Ok(made) => self.counters().add(Counter::GroupRebalances, made),
            // A live member holds the admin lock (it rebalances itself).
            Err(FabricError::Topic { source, .. }) => {
                tracing::debug!(topic = %object, "group rebalance: {source}");
            }
            Err(FabricError::LeaseExpired(_)) => {}
            Err(e) => tracing::warn!(topic = %object, "group rebalance: {e}"),
        }
    }

    /// Maps the instance's hash maps and topics (memory leases whose body
    /// starts with one) among its segments `objects`, dropping those whose
    /// segment is gone.
    fn refresh_maps(&mut self, objects: &[String]) {
        self.watched_maps
            .retain(|object, _| objects.contains(object));
        self.watched_topics
            .retain(|object, _| objects.contains(object));
        self.not_maps.retain(|object, _| objects.contains(object));
        let now = Instant::now();
        for object in objects.iter().cloned() {
            let settled = self
                .not_maps
                .get(&object)
                .is_some_and(|first| now.duration_since(*first) >= MAP_SETUP_GRACE);
            if !object.starts_with("lease.")
                || self.watched_maps.contains_key(&object)
                || self.watched_topics.contains_key(&object)
                || settled
            {
                continue;
            }
            let Some(Ok(segment)) = open_if_kind(self.paths.instance(), &object, SegmentKind::Raw)
            else {
                continue;
            };
            match FabricHashMap::inspect(segment.clone(), self.paths.instance()) {
                Ok(Some(map)) => {
                    self.watched_maps.insert(object, map);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(lease = %object, "not a usable map: {e}");
                    continue;
                }
            }
            match Topic::inspect(segment, self.paths.instance()) {
                Ok(Some(topic)) => {
                    self.watched_topics.insert(object, topic);
                }
                Ok(None) => {
                    self.not_maps.entry(object).or_insert(now);
                }
                Err(e) => tracing::debug!(lease = %object, "not a usable topic: {e}"),
            }
        }
    }

    /// Looks at the pins and writer locks of every map: a pin holding
    /// reuse back (pinned at an older epoch) past the claim-age limit is a
    /// stuck reader, killed if it is ours; a writer lock held that long by
    /// a stopped process (SIGSTOP, a debugger) gets its holder killed (a
    /// running writer is left alone); a dead holder's pin, or a dead
    /// writer's lock, gets repaired.
    fn watch_pins(&mut self, objects: &[String]) {
        self.refresh_maps(objects);
        let now = Instant::now();
        let mut seen = BTreeMap::new();
        let mut locks = BTreeMap::new();
        let mut stuck = Vec::new();
        let mut repair = false;
        for (object, map) in &self.watched_maps {
            let Ok(pins) = map.pins() else {
                continue;
            };
            for pin in pins.into_iter().filter(|p| p.blocking && p.owner != 0) {
                let key = (object.clone(), pin.slot, pin.word);
                let first = self.pins_seen.get(&key).copied().unwrap_or(now);
                seen.insert(key, first);
                let holder = ProcessId::unpack(pin.owner);
                if !holder.is_alive() {
                    repair = true;
                } else if now.duration_since(first) >= self.config.claim_age_limit {
                    stuck.push((
                        holder,
                        object.clone(),
                        now.duration_since(first),
                        StuckKind::Reader,
                    ));
                }
            }
            let writer = map.lock_holder().unwrap_or(0);
            if writer == 0 {
                continue;
            }
            let holder = ProcessId::unpack(writer);
            if !holder.is_alive() {
                repair = true;
                continue;
            }
            // Timed only while the holder is seen stopped holding it, scan
            // after scan: a running writer takes and gives it back all the
            // time.
            if !holder.is_stopped() {
                continue;
            }
            let first = match self.locks_seen.get(object) {
                Some(&(seen_holder, first)) if seen_holder == writer => first,
                _ => now,
            };
            locks.insert(object.clone(), (writer, first));
            if now.duration_since(first) >= self.config.claim_age_limit {
                stuck.push((
                    holder,
                    object.clone(),
                    now.duration_since(first),
                    StuckKind::Writer,
                ));
            }
        }
        self.pins_seen = seen;
        self.locks_seen = locks;
        for (holder, object, held, kind) in stuck {
            if self.is_ours(holder) {
                self.kill_stuck(holder, &object, held, kind);
            }
        }
        if repair {
            self.repair_maps();
        }
    }

    /// Repairs every map seen at the last refresh after dead processes:
    /// their pins cleared, a dead writer's lock taken over and its heap
    /// rebuilt.
    fn repair_maps(&mut self) {
        for (object, map) in &self.watched_maps {
            match map.repair_dead() {
                Ok(Some(report)) => {
                    self.counters().add(Counter::MapRepairs, 1);
                    tracing::info!(
                        map = %object,
                        recovered_blocks = report.recovered_blocks,
                        entries = report.entries,
                        "took over a dead writer's map lock and rebuilt its heap"
                    );
                }
                Ok(None) | Err(FabricError::LeaseExpired(_) | FabricError::LeasePoisoned(_)) => {}
                Err(e) => tracing::warn!(map = %object, "map repair: {e}"),
            }
        }
    }

    /// Whether a process is one of this instance's participants or
    /// workers (and not the supervisor itself): the only processes the
    /// claim watch may kill.
    fn is_ours(&self, process: ProcessId) -> bool {
        process.pid != std::process::id()
            && (self.participants.values().any(|p| p.process == process)
                || self.group.as_ref().is_some_and(|g| g.runs(process)))
    }

    /// Kills a stopped process that has held a claim too long (by pidfd,
    /// after checking that the pid still names the same process), once.
    fn kill_stuck(&mut self, holder: ProcessId, object: &str, held: Duration, kind: StuckKind) {
        if !self.stuck_killed.insert(holder.pack()) {
            return;
        }
        let Some(pid) = rustix::process::Pid::from_raw(holder.pid as i32) else {
            return;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        else {
            return;
        };
        if ProcessId::of(holder.pid) != Some(holder) {
            return;
        }
        match rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL) {
            Ok(()) => {
                let (counter, what) = match kind {
                    StuckKind::Claimer => (
                        Counter::StuckClaimersKilled,
                        "killed a stopped process holding a queue or topic claim past the claim-age limit",
                    ),
                    StuckKind::Reader => (
                        Counter::StuckReadersKilled,
                        "killed a process holding a map pin (holding reuse back) past the claim-age limit",
                    ),
                    StuckKind::Writer => (
                        Counter::StuckClaimersKilled,
                        "killed a stopped process holding a map's writer lock past the claim-age limit",
                    ),
                };
                self.counters().add(counter, 1);
                tracing::warn!(
                    pid = holder.pid,
                    object,
                    held_ms = held.as_millis() as u64,
                    "{what}"
                );
            }
            Err(e) => tracing::warn!(pid = holder.pid, "could not kill a stuck claimer: {e}"),
        }
    }

    /// Repairs every dead participant of every queue of the instance.
    pub fn repair_queues(&self) {
        let objects = match list_segments(self.paths.instance()) {
            Ok(objects) => objects,
            Err(e) => {
                tracing::warn!("listing segments for repair: {e}");
                return;
            }
        };
        for object in objects {
            let Some(queue) = open_if_kind(self.paths.instance(), &object, SegmentKind::Queue)
            else {
                continue;
            };
            match queue.and_then(FabricQueue::repair_dead_in) {
                Ok(report) if report.incarnations > 0 => {
                    let c = self.counters();
                    c.add(Counter::QueueRepairs, report.incarnations);
                    c.add(Counter::ClaimsRepaired, report.claims_tombed);
                    c.add(Counter::ReadsRepaired, report.reads_freed);
                    tracing::info!(
                        queue = %object,
                        claims = report.claims_tombed,
                        reads = report.reads_freed,
                        "repaired a dead participant's claims"
                    );
                }
                Ok(_) | Err(FabricError::Queue(QueueError::RepairBusy)) => {}
                Err(e) => tracing::warn!(queue = %object, "repair: {e}"),
            }
        }
    }

    /// Ends everything: every lease expires and is unlinked, every segment
    /// of the instance goes, lease files are removed.
    pub fn shut_down(mut self) {
        let now = unix_time_ms();
        let ids: Vec<u64> = self.leases.keys().copied().collect();
        for lease_id in ids {
            if self.leases[&lease_id].state == State::Active {
                self.end(lease_id, State::Expired, now);
            }
            if self.leases[&lease_id].state != State::Unlinked {
                self.unlink(lease_id);
            }
        }
        self.registry.get().control.supervisor.store(0, Relaxed);
        match list_segments(self.paths.instance()) {
            Ok(objects) => {
                for object in objects {
                    if let Err(e) = unlink_object(self.paths.instance(), &object) {
                        tracing::warn!("removing {object}: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("listing segments to remove: {e}"),
        }
        tracing::info!(instance = self.paths.instance(), "instance down");
    }

    fn publish_allocators(&self) {
        let control = &self.registry.get().control;
        control.next_lease_id.store(self.next_lease_id, Relaxed);
        control
            .next_incarnation
            .store(self.next_incarnation, Relaxed);
    }

    /// Checks the supervisor's bookkeeping: budgets equal the sum of the
    /// leases that hold them and fit the pools, rows are distinct and
    /// mirrored in the registry, every holder is an attached participant.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let sum = |kind| {
            self.leases
                .values()
                .filter(|l| l.kind == kind)
                .map(|l| l.bytes)
                .sum::<u64>()
        };
        if sum(LeaseKind::Mem) != self.pool_used || self.pool_used > self.config.pool_size {
            return Err(format!("memory budget {} drifted", self.pool_used));
        }
        if sum(LeaseKind::Block) != self.block_used || self.block_used > self.config.block_pool_size
        {
            return Err(format!("block budget {} drifted", self.block_used));
        }
        let rows: BTreeSet<usize> = self.leases.values().map(|l| l.row).collect();
        if rows != self.lease_rows || rows.len() != self.leases.len() {
            return Err("lease rows out of step".into());
        }
        let reg = self.registry.get();
        for (&id, lease) in &self.leases {
            let mirrored = reg.leases[lease.row].read(lease.row);
            if mirrored.is_none_or(|m| m.lease_id != id || m.state != lease.state.word()) {
                return Err(format!("lease {id} not mirrored in the registry"));
            }
            if let Some(holder) = lease
                .holders
                .keys()
                .find(|h| !self.participants.contains_key(h))
            {
                return Err(format!("lease {id} held by ended incarnation {holder}"));
            }
        }
        let rows: BTreeSet<usize> = self.participants.values().map(|p| p.row).collect();
        if rows != self.participant_rows || rows.len() != self.participants.len() {
            return Err("participant rows out of step".into());
        }
        Ok(())
    }

    fn publish_budget(&self) {
        let control = &self.registry.get().control;
        control.pool_used.store(self.pool_used, Relaxed);
        control.block_used.store(self.block_used, Relaxed);
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

use std::sync::atomic::Ordering::{Relaxed, Release};

/// How long a memory lease without a map is looked at again (a map is
/// set up by its maker right after the lease is granted).
const MAP_SETUP_GRACE: Duration = Duration::from_secs(5);

/// What a stuck process was holding.
#[derive(Clone, Copy)]
enum StuckKind {
    /// A queue claim (killed only while stopped).
    Claimer,
    /// A map pin holding reuse back.
    Reader,
    /// A map's writer lock (killed only while stopped).
    Writer,
}

fn attached(peer: &Peer) -> Result<u64, ControlError> {
    peer.incarnation.ok_or(ControlError::NotAttached)
}

fn check_ttl(lease_secs: u64) -> Result<(), ControlError> {
    if lease_secs == 0 {
        return Err(ControlError::Invalid("a lease of zero seconds".into()));
    }
    if lease_secs > MAX_LEASE_SECS {
        return Err(ControlError::Invalid(format!(
            "a lease of {lease_secs} s exceeds the {MAX_LEASE_SECS} s limit"
        )));
    }
    Ok(())
}

fn kind_word(kind: LeaseKind) -> u64 {
    match kind {
        LeaseKind::Mem => lease_kind::MEM,
        LeaseKind::Block => lease_kind::BLOCK,
    }
}

/// The lowest row not in `used`, below `max`.
fn free_row(used: &BTreeSet<usize>, max: usize) -> Option<usize> {
    (0..max).find(|row| !used.contains(row))
}

/// A block lease's file name: instance-scoped, so instances may share a
/// data dir.
fn block_file_name(instance: &str, lease_id: u64) -> String {
    format!("grafos.{instance}.lease.{lease_id}.blk")
}

fn remove_file(path: &Path) -> Result<(), FabricError> {
    std::fs::remove_file(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FabricError::NotFound(path.display().to_string()),
        _ => FabricError::Io {
            op: "unlink",
            target: path.display().to_string(),
            source,
        },
    })
}

/// Removes the lease segments and files an earlier run of the instance
/// left behind: with no registry to say what they were, they are garbage,
/// and their names would collide with the new leases'. (A process still
/// mapping one keeps its mapping.)
fn remove_leftovers(paths: &InstancePaths, data_dir: &Path) {
    if let Ok(objects) = list_segments(paths.instance()) {
        for object in objects.iter().filter(|o| o.starts_with("lease.")) {
            tracing::warn!("removing segment {object}, left by an earlier run");
            let _ = unlink_object(paths.instance(), object);
        }
    }
    let prefix = format!("grafos.{}.lease.", paths.instance());
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".blk") {
            tracing::warn!("removing {name}, left in the data dir by an earlier run");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A random instance token from the kernel.
fn random_token() -> u64 {
    let mut bytes = [0u8; 8];
    let filled = File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !filled {
        // No urandom: the time and pid still differ between runs.
        let mixed = u128::from(unix_time_ms()) ^ (u128::from(std::process::id()) << 40);
        bytes = (mixed as u64).to_le_bytes();
    }
    u64::from_le_bytes(bytes) | 1
}

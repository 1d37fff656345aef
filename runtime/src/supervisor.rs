//! The supervisor's state and its answers to control requests.
//!
//! The state here is authoritative; the registry segment mirrors it for
//! readers that do not ask (`grafos status`, workers checking a block
//! lease) and for a restarted supervisor, which adopts the leases it finds
//! there. Nothing read back from shared memory is trusted without checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use grafos_worker::FabricError;
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::control::{
    BLOCK_SIZE, ControlError, LeaseGrant, LeaseKind, Reply, Request, decode, encode,
};
use grafos_worker::futex::LinuxFutex;
use grafos_worker::host::unix_time_ms;
use grafos_worker::instance::InstancePaths;
use grafos_worker::layout::header::{Expect, FenceState, FenceWord, SegmentKind, TypeDescriptor};
use grafos_worker::layout::queue::QueueError;
use grafos_worker::layout::registry::{
    Counter, InstanceCounters, MAX_LEASES, MAX_PARTICIPANTS, Registry, lease_kind, lease_state,
};
use grafos_worker::layout::wait::Futex;
use grafos_worker::participant::{liveness_file, liveness_locked};
use grafos_worker::process::ProcessId;
use grafos_worker::registry::Mapped;
use grafos_worker::segment::{Segment, SegmentSpec, list_segments};

/// Longest lease a request may ask for (a year).
pub const MAX_LEASE_SECS: u64 = 365 * 24 * 3600;
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
    holders: BTreeSet<u64>,
    /// The mapped segment of a memory lease (to move its fence word).
    segment: Option<Segment>,
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
    /// Sets up the instance's segments and data dir, adopting the leases of
    /// a dead predecessor if its registry is still there. The caller holds
    /// the instance's supervisor lock.
    ///
    /// # Errors
    /// If a segment or the data dir cannot be made.
    pub fn start(paths: InstancePaths, config: Config) -> Result<Supervisor, FabricError> {
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
        Ok(supervisor)
    }

    fn fresh(paths: InstancePaths, config: Config) -> Result<Supervisor, FabricError> {
        remove_stale_block_files(&config.data_dir);
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
        let control = &registry.get().control;
        control.next_incarnation.store(1, Relaxed);
        control.next_lease_id.store(1, Relaxed);
        Ok(Supervisor {
            paths,
            config,
            token,
            registry,
            counters,
            leases: BTreeMap::new(),
            participants: BTreeMap::new(),
            pool_used: 0,
            block_used: 0,
            shutdown_requested: false,
        })
    }

    /// Takes over a dead supervisor's registry: its leases keep their
    /// deadlines; its participants must attach again.
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
        let mut supervisor = Supervisor {
            paths,
            config,
            token,
            registry,
            counters,
            leases: BTreeMap::new(),
            participants: BTreeMap::new(),
            pool_used: 0,
            block_used: 0,
            shutdown_requested: false,
        };
        let reg = supervisor.registry.get();
        for row in &reg.participants {
            row.clear();
        }
        let rows: Vec<_> = reg.leases().collect();
        let mut max_id = 0;
        for info in rows {
            max_id = max_id.max(info.lease_id);
            match supervisor.adopt_lease(&info) {
                Ok(()) => {}
                Err(reason) => {
                    tracing::warn!(lease = info.lease_id, "not adopted: {reason}");
                    supervisor.registry.get().leases[info.row].clear();
                }
            }
        }
        let control = &supervisor.registry.get().control;
        let next_id = control.next_lease_id.load(Relaxed).max(max_id + 1);
        control.next_lease_id.store(next_id, Relaxed);
        let next_inc = control.next_incarnation.load(Relaxed).max(1);
        control.next_incarnation.store(next_inc, Relaxed);
        tracing::info!(
            leases = supervisor.leases.len(),
            "adopted the registry of a previous supervisor"
        );
        Ok(supervisor)
    }

    fn adopt_lease(
        &mut self,
        info: &grafos_worker::layout::registry::LeaseInfo,
    ) -> Result<(), String> {
        let state = match info.state {
            lease_state::ACTIVE => State::Active,
            lease_state::EXPIRED => State::Expired,
            lease_state::POISONED => State::Poisoned,
            lease_state::UNLINKED => State::Unlinked,
            other => return Err(format!("unknown state {other}")),
        };
        if info.lease_id == 0 || self.leases.contains_key(&info.lease_id) {
            return Err("bad or duplicate id".into());
        }
        let (kind, segment) = match info.kind {
            lease_kind::MEM => {
                let segment = (state != State::Unlinked)
                    .then(|| self.open_lease_segment(info.lease_id))
                    .transpose()?;
                (LeaseKind::Mem, segment)
            }
            lease_kind::BLOCK => (LeaseKind::Block, None),
            other => return Err(format!("unknown kind {other}")),
        };
        let budget = match kind {
            LeaseKind::Mem => self.config.pool_size - self.pool_used,
            LeaseKind::Block => self.config.block_pool_size - self.block_used,
        };
        if info.bytes == 0 || info.bytes > budget {
            return Err(format!("{} bytes do not fit the budget", info.bytes));
        }
        match kind {
            LeaseKind::Mem => self.pool_used += info.bytes,
            LeaseKind::Block => self.block_used += info.bytes,
        }
        self.registry.get().leases[info.row]
            .holders
            .store(0, Relaxed);
        self.leases.insert(
            info.lease_id,
            Lease {
                row: info.row,
                kind,
                bytes: info.bytes,
                deadline_ms: info.deadline_ms,
                state,
                ended_ms: info.ended_ms,
                holders: BTreeSet::new(),
                segment,
            },
        );
        Ok(())
    }

    fn open_lease_segment(&self, lease_id: u64) -> Result<Segment, String> {
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
        Ok(segment)
    }

    /// The instance's paths.
    pub fn paths(&self) -> &InstancePaths {
        &self.paths
    }

    /// Whether a `Shutdown` request came in.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested
    }

    /// The instance counters.
    pub fn counters(&self) -> &InstanceCounters {
        self.counters.get()
    }

    /// Answers one raw control message from `peer`. Never panics on any
    /// input: a message that fails to decode gets a `Malformed` or
    /// `Version` error reply and a log line.
    pub fn handle_message(&mut self, peer: &mut Peer, message: &[u8]) -> Vec<u8> {
        let reply = match decode::<Request>(message) {
            Ok(request) => self.handle(peer, request, unix_time_ms()),
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
        let result = match request {
            Request::Ping => Ok(Reply::Pong {
                pid: std::process::id(),
            }),
            Request::Attach => self.attach(peer, now_ms),
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
                attached(peer).and_then(|me| self.release(me, lease_id, now_ms))
            }
            Request::Expire { lease_id } => self.end_by_hand(lease_id, State::Expired, now_ms),
            Request::Poison { lease_id } => self.end_by_hand(lease_id, State::Poisoned, now_ms),
            Request::Shutdown => {
                self.shutdown_requested = true;
                Ok(Reply::Done)
            }
        };
        result.unwrap_or_else(Reply::Error)
    }

    fn attach(&mut self, peer: &mut Peer, now_ms: u64) -> Result<Reply, ControlError> {
        let process = peer
            .process
            .ok_or_else(|| ControlError::Failed("the kernel did not say who the peer is".into()))?;
        if let Some(incarnation) = peer.incarnation {
            let row = self.participants[&incarnation].row;
            return Ok(self.attached_reply(incarnation, row));
        }
        let file = liveness_file(&self.paths, process);
        if liveness_locked(&file) != Some(true) {
            return Err(ControlError::Invalid(format!(
                "liveness file {} is not locked; attach with grafos_worker::participant::attach",
                file.display()
            )));
        }
        let reg = self.registry.get();
        let row = (0..MAX_PARTICIPANTS)
            .find(|&i| reg.participants[i].read(i).is_none())
            .ok_or_else(|| {
                ControlError::Failed(format!("all {MAX_PARTICIPANTS} participant rows in use"))
            })?;
        let incarnation = reg.control.next_incarnation.fetch_add(1, Relaxed);
        reg.participants[row].publish(incarnation, process.pack(), now_ms);
        self.participants
            .insert(incarnation, Participant { row, process });
        peer.incarnation = Some(incarnation);
        self.counters().add(Counter::ParticipantsAttached, 1);
        tracing::info!(incarnation, pid = process.pid, "participant attached");
        Ok(self.attached_reply(incarnation, row))
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
        let reg = self.registry.get();
        let row = (0..MAX_LEASES)
            .find(|&i| reg.leases[i].read(i).is_none())
            .ok_or_else(|| ControlError::Failed(format!("all {MAX_LEASES} lease rows in use")))?;
        let lease_id = reg.control.next_lease_id.fetch_add(1, Relaxed);
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
            holders: BTreeSet::from([me]),
            segment,
        };
        reg.leases[row].publish(lease_id, kind_word(kind), bytes, deadline_ms);
        reg.leases[row].holders.store(1, Relaxed);
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
        self.config.data_dir.join(format!("lease.{lease_id}.blk"))
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
        if let Err(e) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)
        {
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
        lease.holders.insert(me);
        let (row, holders) = (lease.row, lease.holders.len() as u64);
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
        if !lease.holders.contains(&me) {
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

    fn release(&mut self, me: u64, lease_id: u64, now_ms: u64) -> Result<Reply, ControlError> {
        let lease = self
            .leases
            .get_mut(&lease_id)
            .ok_or(ControlError::UnknownLease(lease_id))?;
        if !lease.holders.remove(&me) {
            return Err(ControlError::Invalid(format!(
                "incarnation {me} does not hold lease {lease_id}"
            )));
        }
        let last = lease.holders.is_empty();
        let (row, holders) = (lease.row, lease.holders.len() as u64);
        self.registry.get().leases[row]
            .holders
            .store(holders, Relaxed);
        if last && lease.state == State::Active {
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

    /// One reaper pass at `now_ms`: expires leases past their deadline,
    /// unlinks ended leases past their grace (or with no holder left),
    /// gives back the budget of unlinked leases no live participant maps,
    /// and ends participants whose process is gone.
    pub fn tick(&mut self, now_ms: u64) {
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
        let dead: Vec<u64> = self
            .participants
            .iter()
            .filter(|(_, p)| !p.process.is_alive())
            .map(|(&inc, _)| inc)
            .collect();
        for incarnation in dead {
            self.participant_ended(incarnation, Ending::Died, now_ms);
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
        let grace = self.config.grace.as_millis() as u64;
        let mut freed = false;
        let ids: Vec<u64> = self.leases.keys().copied().collect();
        for lease_id in ids {
            let lease = &self.leases[&lease_id];
            let ended = matches!(lease.state, State::Expired | State::Poisoned);
            if ended && (lease.holders.is_empty() || lease.ended_ms + grace <= now_ms) {
                self.unlink(lease_id);
            }
            let lease = &self.leases[&lease_id];
            if lease.state == State::Unlinked && lease.holders.is_empty() {
                let lease = self.leases.remove(&lease_id).expect("listed");
                self.registry.get().leases[lease.row].clear();
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
        for lease in self.leases.values_mut() {
            if lease.holders.remove(&incarnation) {
                self.registry.get().leases[lease.row]
                    .holders
                    .store(lease.holders.len() as u64, Relaxed);
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
                let _ = std::fs::remove_file(liveness_file(&self.paths, participant.process));
            }
        }
        self.collect(now_ms);
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
            let Ok(name) = grafos_worker::segment::SegmentName::new(self.paths.instance(), &object)
            else {
                continue;
            };
            let expect = Expect {
                kind: Some(SegmentKind::Queue),
                ..Expect::default()
            };
            let result = Segment::open(&name, &expect).and_then(FabricQueue::repair_dead_in);
            match result {
                Ok(report) if report.incarnations > 0 => {
                    let c = self.counters();
                    c.add(Counter::QueueRepairs, report.incarnations);
                    c.add(Counter::ClaimsRepaired, report.claims_tombed);
                    c.add(Counter::ReadsRepaired, report.reads_freed);
                    tracing::info!(
                        queue = %name,
                        claims = report.claims_tombed,
                        reads = report.reads_freed,
                        "repaired a dead participant's claims"
                    );
                }
                Ok(_)
                | Err(FabricError::Queue(QueueError::RepairBusy))
                | Err(FabricError::NotFound(_)) => {}
                Err(FabricError::Layout {
                    source: grafos_worker::layout::LayoutError::KindMismatch { .. },
                    ..
                }) => {}
                Err(e) => tracing::warn!(queue = %name, "repair: {e}"),
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
                    if let Ok(name) =
                        grafos_worker::segment::SegmentName::new(self.paths.instance(), &object)
                    {
                        let _ = Segment::unlink(&name);
                    }
                }
            }
            Err(e) => tracing::warn!("listing segments to remove: {e}"),
        }
        tracing::info!(instance = self.paths.instance(), "instance down");
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

/// Removes lease files a previous run left in the data dir: with no
/// registry to say what they were, they are garbage, and their names would
/// collide with the new leases'.
fn remove_stale_block_files(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("lease.") && name.ends_with(".blk") {
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

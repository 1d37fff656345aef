//! The instance registry: the supervisor's published record of its pool,
//! participants and leases (kind 4, see docs/LAYOUT.md).
//!
//! The supervisor is the only writer of everything here except each
//! participant's heartbeat, which the participant stores itself. Readers
//! (`grafos status`, workers checking a lease, a restarted supervisor) load
//! the words one by one: a row's `state` is stored last on publication
//! (Release) and first on removal, so a reader that sees a row in use
//! (Acquire) sees the fields stored before it. A reader may still see a row
//! mid-update (a renewal moving its deadline); every value read is
//! validated before use, as for any shared memory.

use std::sync::atomic::{AtomicU64, Ordering};

/// Participant rows in a registry.
pub const MAX_PARTICIPANTS: usize = 256;
/// Lease rows in a registry.
pub const MAX_LEASES: usize = 1024;

/// Pool-wide words (128 bytes).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RegistryControl {
    /// The supervisor's packed process identity (0 while none runs).
    pub supervisor: AtomicU64,
    /// Unix milliseconds of the supervisor's last reaper pass.
    pub supervisor_heartbeat_ms: AtomicU64,
    /// Shared-memory budget in bytes.
    pub pool_size: AtomicU64,
    /// Shared-memory bytes held by leases not yet given back.
    pub pool_used: AtomicU64,
    /// Block-storage budget in bytes.
    pub block_pool_size: AtomicU64,
    /// Block-storage bytes held by leases not yet given back.
    pub block_used: AtomicU64,
    /// The next participant incarnation to hand out (never reused).
    pub next_incarnation: AtomicU64,
    /// The next lease id to hand out (never reused).
    pub next_lease_id: AtomicU64,
    /// How long an expired lease stays readable, in milliseconds.
    pub grace_ms: AtomicU64,
}

/// Participant row states.
pub mod participant_state {
    /// Unused row.
    pub const FREE: u64 = 0;
    /// An attached process.
    pub const ATTACHED: u64 = 1;
}

/// One attached process (64 bytes).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ParticipantRow {
    /// A [`participant_state`] value; stored last on publication.
    pub state: AtomicU64,
    /// Never reused within the instance.
    pub incarnation: AtomicU64,
    /// Packed process identity (pid and start time).
    pub process: AtomicU64,
    /// Unix milliseconds of the attach.
    pub attached_ms: AtomicU64,
    /// Unix milliseconds of the participant's last heartbeat (written by
    /// the participant).
    pub heartbeat_ms: AtomicU64,
}

/// Lease row states.
pub mod lease_state {
    /// Unused row.
    pub const FREE: u64 = 0;
    /// Usable until its deadline.
    pub const ACTIVE: u64 = 1;
    /// Past its deadline or expired by hand: readable for the grace period,
    /// then unlinked.
    pub const EXPIRED: u64 = 2;
    /// Declared dead by hand: nothing may use it; unlinked after the grace
    /// period.
    pub const POISONED: u64 = 3;
    /// Unlinked; the row stays until no live holder maps it, so its budget
    /// is not handed out twice.
    pub const UNLINKED: u64 = 4;
}

/// Lease kinds.
pub mod lease_kind {
    /// A shared-memory segment.
    pub const MEM: u64 = 1;
    /// A pre-allocated file in the data dir.
    pub const BLOCK: u64 = 2;
}

/// One lease (64 bytes).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct LeaseRow {
    /// A [`lease_state`] value; stored last on publication.
    pub state: AtomicU64,
    /// Never reused within the instance.
    pub lease_id: AtomicU64,
    /// A [`lease_kind`] value.
    pub kind: AtomicU64,
    /// Bytes drawn from the budget.
    pub bytes: AtomicU64,
    /// Unix milliseconds after which the lease expires.
    pub deadline_ms: AtomicU64,
    /// Unix milliseconds at which it expired or was poisoned (0 before).
    pub ended_ms: AtomicU64,
    /// Participants that hold it now.
    pub holders: AtomicU64,
}

/// The registry body: control words, participants, leases.
#[repr(C)]
#[derive(Debug)]
pub struct Registry {
    /// Pool-wide words.
    pub control: RegistryControl,
    /// Attached processes.
    pub participants: [ParticipantRow; MAX_PARTICIPANTS],
    /// Leases.
    pub leases: [LeaseRow; MAX_LEASES],
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<RegistryControl>() == 128);
    assert!(size_of::<ParticipantRow>() == 64);
    assert!(size_of::<LeaseRow>() == 64);
    assert!(offset_of!(Registry, participants) == 128);
    assert!(offset_of!(Registry, leases) == 128 + 64 * MAX_PARTICIPANTS);
    assert!(size_of::<Registry>() == 128 + 64 * (MAX_PARTICIPANTS + MAX_LEASES));
};

/// Bytes of a registry body.
pub const REGISTRY_SIZE: u64 = std::mem::size_of::<Registry>() as u64;

/// A participant row as read (one load per field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Row index.
    pub row: usize,
    /// Incarnation.
    pub incarnation: u64,
    /// Packed process identity.
    pub process: u64,
    /// Unix milliseconds of the attach.
    pub attached_ms: u64,
    /// Unix milliseconds of the last heartbeat.
    pub heartbeat_ms: u64,
}

/// A lease row as read (one load per field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Row index.
    pub row: usize,
    /// A [`lease_state`] value other than `FREE`.
    pub state: u64,
    /// Lease id.
    pub lease_id: u64,
    /// A [`lease_kind`] value.
    pub kind: u64,
    /// Bytes drawn from the budget.
    pub bytes: u64,
    /// Unix milliseconds of the deadline.
    pub deadline_ms: u64,
    /// Unix milliseconds at which it ended (0 while active).
    pub ended_ms: u64,
    /// Holders now.
    pub holders: u64,
}

impl ParticipantRow {
    /// Publishes a participant in a free row (supervisor only).
    pub fn publish(&self, incarnation: u64, process: u64, now_ms: u64) {
        self.incarnation.store(incarnation, Ordering::Relaxed);
        self.process.store(process, Ordering::Relaxed);
        self.attached_ms.store(now_ms, Ordering::Relaxed);
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
        // Release: a reader that sees ATTACHED sees the fields above.
        self.state
            .store(participant_state::ATTACHED, Ordering::Release);
    }

    /// Frees the row (supervisor only): the state goes first, so no reader
    /// takes the fields for a live participant's.
    pub fn clear(&self) {
        self.state.store(participant_state::FREE, Ordering::Release);
        self.incarnation.store(0, Ordering::Relaxed);
        self.process.store(0, Ordering::Relaxed);
    }

    /// The row, if it holds a participant.
    pub fn read(&self, row: usize) -> Option<ParticipantInfo> {
        if self.state.load(Ordering::Acquire) != participant_state::ATTACHED {
            return None;
        }
        Some(ParticipantInfo {
            row,
            incarnation: self.incarnation.load(Ordering::Relaxed),
            process: self.process.load(Ordering::Relaxed),
            attached_ms: self.attached_ms.load(Ordering::Relaxed),
            heartbeat_ms: self.heartbeat_ms.load(Ordering::Relaxed),
        })
    }
}

impl LeaseRow {
    /// Publishes a lease in a free row (supervisor only).
    pub fn publish(&self, lease_id: u64, kind: u64, bytes: u64, deadline_ms: u64) {
        self.lease_id.store(lease_id, Ordering::Relaxed);
        self.kind.store(kind, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.deadline_ms.store(deadline_ms, Ordering::Relaxed);
        self.ended_ms.store(0, Ordering::Relaxed);
        self.holders.store(0, Ordering::Relaxed);
        // Release: a reader that sees ACTIVE sees the fields above.
        self.state.store(lease_state::ACTIVE, Ordering::Release);
    }

    /// Frees the row (supervisor only).
    pub fn clear(&self) {
        self.state.store(lease_state::FREE, Ordering::Release);
        self.lease_id.store(0, Ordering::Relaxed);
    }

    /// The row, if it holds a lease.
    pub fn read(&self, row: usize) -> Option<LeaseInfo> {
        let state = self.state.load(Ordering::Acquire);
        if state == lease_state::FREE {
            return None;
        }
        Some(LeaseInfo {
            row,
            state,
            lease_id: self.lease_id.load(Ordering::Relaxed),
            kind: self.kind.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            deadline_ms: self.deadline_ms.load(Ordering::Relaxed),
            ended_ms: self.ended_ms.load(Ordering::Relaxed),
            holders: self.holders.load(Ordering::Relaxed),
        })
    }
}

impl Registry {
    /// The participants now attached.
    pub fn participants(&self) -> impl Iterator<Item = ParticipantInfo> + '_ {
        self.participants
            .iter()
            .enumerate()
            .filter_map(|(i, row)| row.read(i))
    }

    /// The leases now held (in any state but `FREE`).
    pub fn leases(&self) -> impl Iterator<Item = LeaseInfo> + '_ {
        self.leases
            .iter()
            .enumerate()
            .filter_map(|(i, row)| row.read(i))
    }

    /// The row of lease `lease_id`, if one holds it.
    pub fn lease(&self, lease_id: u64) -> Option<LeaseInfo> {
        self.leases().find(|l| l.lease_id == lease_id)
    }
}

/// The instance counters (kind 5): one `u64` per [`Counter`], written with
/// `fetch_add` by whoever counts, read by `grafos status`.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct InstanceCounters {
    words: [AtomicU64; COUNTER_SLOTS],
}

/// Slots in the counters segment (room to add counters without a layout
/// change).
pub const COUNTER_SLOTS: usize = 64;
/// Bytes of a counters body.
pub const COUNTERS_SIZE: u64 = std::mem::size_of::<InstanceCounters>() as u64;

/// What the instance counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Leases handed out.
    LeasesAcquired = 0,
    /// Renewals granted.
    LeasesRenewed = 1,
    /// Leases released by their last holder.
    LeasesReleased = 2,
    /// Leases expired (deadline passed or expired by hand).
    LeasesExpired = 3,
    /// Leases poisoned by hand.
    LeasesPoisoned = 4,
    /// Lease segments and files removed.
    LeasesUnlinked = 5,
    /// Acquires refused for lack of budget.
    BudgetRefusals = 6,
    /// Processes attached.
    ParticipantsAttached = 7,
    /// Processes that detached cleanly.
    ParticipantsDetached = 8,
    /// Processes found dead while attached.
    ParticipantsDied = 9,
    /// Queue repairs run after a death.
    QueueRepairs = 10,
    /// Queue claims (slots being written) a repair tombed.
    ClaimsRepaired = 11,
    /// Queue reads (slots being read) a repair freed.
    ReadsRepaired = 12,
    /// Control messages refused as malformed.
    BadMessages = 13,
    /// Claim holders killed for holding a claim past the claim-age limit.
    StuckClaimersKilled = 14,
    /// Relocatable edges moved to a fresh segment (a new generation
    /// published).
    EdgeRelocations = 15,
    /// Edge handles that rebound to a newer generation.
    EdgeRebinds = 16,
    /// Records carried into a relocated edge.
    EdgeRecordsCarried = 17,
    /// Spans of records a relocation could not carry (each held at least
    /// one record).
    EdgeRecordsLost = 18,
    /// Records read again after a restart or a rebind, and skipped as
    /// already handled.
    Redeliveries = 19,
    /// Hash-map writer locks of dead processes taken over and their heaps
    /// rebuilt by the supervisor.
    MapRepairs = 20,
    /// Readers killed for holding a hash-map pin that held reuse back
    /// past the claim-age limit.
    StuckReadersKilled = 21,
    /// Dead producers' topic claims turned into tombstones by the
    /// supervisor.
    TopicClaimsRepaired = 22,
    /// Consumer groups rebalanced by the supervisor after a member's
    /// process died (members also rebalance on their own).
    GroupRebalances = 23,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 24] = [
        Counter::LeasesAcquired,
        Counter::LeasesRenewed,
        Counter::LeasesReleased,
        Counter::LeasesExpired,
        Counter::LeasesPoisoned,
        Counter::LeasesUnlinked,
        Counter::BudgetRefusals,
        Counter::ParticipantsAttached,
        Counter::ParticipantsDetached,
        Counter::ParticipantsDied,
        Counter::QueueRepairs,
        Counter::ClaimsRepaired,
        Counter::ReadsRepaired,
        Counter::BadMessages,
        Counter::StuckClaimersKilled,
        Counter::EdgeRelocations,
        Counter::EdgeRebinds,
        Counter::EdgeRecordsCarried,
        Counter::EdgeRecordsLost,
        Counter::Redeliveries,
        Counter::MapRepairs,
        Counter::StuckReadersKilled,
        Counter::TopicClaimsRepaired,
        Counter::GroupRebalances,
    ];

    /// The name `grafos status` shows.
    pub fn name(self) -> &'static str {
        match self {
            Counter::LeasesAcquired => "leases_acquired",
            Counter::LeasesRenewed => "leases_renewed",
            Counter::LeasesReleased => "leases_released",
            Counter::LeasesExpired => "leases_expired",
            Counter::LeasesPoisoned => "leases_poisoned",
            Counter::LeasesUnlinked => "leases_unlinked",
            Counter::BudgetRefusals => "budget_refusals",
            Counter::ParticipantsAttached => "participants_attached",
            Counter::ParticipantsDetached => "participants_detached",
            Counter::ParticipantsDied => "participants_died",
            Counter::QueueRepairs => "queue_repairs",
            Counter::ClaimsRepaired => "claims_repaired",
            Counter::ReadsRepaired => "reads_repaired",
            Counter::BadMessages => "bad_messages",
            Counter::StuckClaimersKilled => "stuck_claimers_killed",
            Counter::EdgeRelocations => "edge_relocations",
            Counter::EdgeRebinds => "edge_rebinds",
            Counter::EdgeRecordsCarried => "edge_records_carried",
            Counter::EdgeRecordsLost => "edge_records_lost",
            Counter::MapRepairs => "map_repairs",
            Counter::StuckReadersKilled => "stuck_readers_killed",
            Counter::TopicClaimsRepaired => "topic_claims_repaired",
            Counter::GroupRebalances => "group_rebalances",
            Counter::Redeliveries => "redeliveries",
        }
    }
}

impl InstanceCounters {
    /// Adds `n` to a counter. Relaxed: counters order nothing.
    pub fn add(&self, counter: Counter, n: u64) {
        self.words[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.words[counter as usize].load(Ordering::Relaxed)
    }
}

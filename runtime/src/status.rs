//! `grafos status`: what the instance's registry, counters and queues say,
//! read straight from shared memory (no request disturbs the supervisor,
//! and it works while none runs).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use grafos_worker::FabricError;
use grafos_worker::collections::map::FabricHashMap;
use grafos_worker::collections::queue::FabricQueue;
use grafos_worker::host::unix_time_ms;
use grafos_worker::instance::InstancePaths;
use grafos_worker::layout::header::SegmentKind;
use grafos_worker::layout::registry::{
    Counter, InstanceCounters, Registry, lease_kind, lease_state,
};
use grafos_worker::mq::topic::{Topic, TopicDescription};
use grafos_worker::participant::{liveness_file, liveness_locked};
use grafos_worker::process::ProcessId;
use grafos_worker::registry::Mapped;
use grafos_worker::segment::{Segment, list_segments, open_if_kind};
use serde::Serialize;

use crate::group::{GroupStatus, read_status};
use std::sync::atomic::Ordering::Relaxed;

/// Everything `grafos status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The instance.
    pub instance: String,
    /// The supervisor.
    pub supervisor: SupervisorStatus,
    /// The shared-memory pool.
    pub memory_pool: PoolStatus,
    /// The block pool.
    pub block_pool: PoolStatus,
    /// Leases.
    pub leases: Vec<LeaseStatus>,
    /// Attached processes.
    pub participants: Vec<ParticipantStatus>,
    /// Queues of the instance.
    pub queues: Vec<QueueStatus>,
    /// Hash maps (object stores) in memory leases.
    pub maps: Vec<MapStatus>,
    /// Topics: per partition head, tail and counters, per group lag.
    pub topics: Vec<TopicStatus>,
    /// The workers of the topology `grafos run` started, if any.
    pub workers: Option<GroupStatus>,
    /// Instance counters by name.
    pub counters: BTreeMap<&'static str, u64>,
}

/// The supervisor process.
#[derive(Debug, Serialize)]
pub struct SupervisorStatus {
    /// Its pid, if one is recorded.
    pub pid: Option<u32>,
    /// Whether that process runs.
    pub alive: bool,
    /// Milliseconds since its last reaper pass.
    pub heartbeat_age_ms: u64,
}

/// A budget.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    /// Size in bytes.
    pub capacity: u64,
    /// Bytes held by leases.
    pub used: u64,
    /// Bytes free.
    pub free: u64,
}

/// A lease.
#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    /// Id.
    pub id: u64,
    /// `mem` or `block`.
    pub kind: &'static str,
    /// `active`, `expired`, `poisoned` or `unlinked`.
    pub state: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Milliseconds to the deadline (0 once past).
    pub ttl_left_ms: u64,
    /// Participants holding it.
    pub holders: u64,
}

/// An attached process.
#[derive(Debug, Serialize)]
pub struct ParticipantStatus {
    /// Incarnation.
    pub incarnation: u64,
    /// Pid.
    pub pid: u32,
    /// Whether it holds its liveness lock (or, without a file, runs).
    pub alive: bool,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// A FabricQueue segment.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    /// Object name.
    pub name: String,
    /// Records in it.
    pub depth: u64,
    /// Slots.
    pub capacity: u64,
    /// Positions claimed by producers (pushes, tombstoned ones included).
    pub pushes: u64,
    /// Positions taken by consumers.
    pub pops: u64,
    /// Incarnations repaired.
    pub repairs: u64,
    /// Claims turned into tombstones by repair or seal.
    pub tombstones: u64,
    /// Whether it is sealed.
    pub sealed: bool,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// A topic's partitions and groups.
#[derive(Debug, Serialize)]
pub struct TopicStatus {
    /// Its name.
    pub name: String,
    /// Its lease.
    pub lease_id: u64,
    /// `overwrite` or `backpressure`.
    pub overflow: &'static str,
    /// Records retained per partition.
    pub capacity: u64,
    /// Largest record in bytes.
    pub stride: u64,
    /// Dead producers repaired.
    pub repairs: u64,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// Per consumer group.
    pub groups: Vec<TopicGroupStatus>,
}

/// One partition of a topic.
#[derive(Debug, Serialize)]
pub struct PartitionStatus {
    /// Next offset appended.
    pub head: u64,
    /// Oldest offset retained.
    pub tail: u64,
    /// Records overwritten before every reader had them.
    pub overwrites: u64,
    /// Records readers found overwritten.
    pub lost: u64,
    /// Dead producers' claims turned into tombstones.
    pub holes: u64,
}

/// One consumer group of a topic.
#[derive(Debug, Serialize)]
pub struct TopicGroupStatus {
    /// Its name.
    pub name: String,
    /// Whether it holds producers back.
    pub holding: bool,
    /// Member processes alive.
    pub live_members: usize,
    /// Committed offset per partition.
    pub committed: Vec<u64>,
    /// Records appended and not committed, per partition.
    pub lag: Vec<u64>,
    /// Rebalances so far (the group generation).
    pub generation: u64,
    /// Members evicted because their process died.
    pub evicted_dead: u64,
    /// Members evicted for silence past the session timeout.
    pub evicted_silent: u64,
    /// Partitions that changed owner.
    pub moved: u64,
    /// Rebalances that found an earlier one cut short.
    pub rebalances_repaired: u64,
    /// Named members and their partitions.
    pub members: Vec<GroupMemberStatus>,
}

/// A named member of a consumer group.
#[derive(Debug, Serialize)]
pub struct GroupMemberStatus {
    /// Its name.
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Its session timeout in ms.
    pub session_ms: u64,
    /// The partitions it owns.
    pub partitions: Vec<u32>,
    /// Their summed lag.
    pub lag: u64,
}

/// A FabricHashMap in a memory lease.
#[derive(Debug, Serialize)]
pub struct MapStatus {
    /// The lease holding its control block.
    pub lease_id: u64,
    /// Entries reachable.
    pub entries: u64,
    /// Bytes of blocks in use.
    pub used_bytes: u64,
    /// Bytes retired, waiting for readers to move on.
    pub retired_bytes: u64,
    /// Arenas (leases) and their bytes.
    pub arenas: u64,
    /// Bytes of all arenas.
    pub arena_bytes: u64,
    /// The reclamation epoch.
    pub epoch: u64,
    /// Readers pinned now.
    pub pins: usize,
    /// Pid of the process holding the writer lock, if any.
    pub writer_pid: Option<u32>,
    /// Dead writers' locks taken over and heaps rebuilt.
    pub repairs: u64,
}

/// Reads the instance's status.
///
/// # Errors
/// `NotFound` if the instance has no registry (it is not up); others if
/// it is unreadable.
pub fn read(paths: &InstancePaths) -> Result<Status, FabricError> {
    let registry = Mapped::<Registry>::open(&paths.registry(), None)?;
    let token = registry.segment().fields().instance_token;
    let reg = registry.get();
    let now = unix_time_ms();
    let control = &reg.control;
    let supervisor_raw = control.supervisor.load(Relaxed);
    let supervisor = (supervisor_raw != 0).then(|| ProcessId::unpack(supervisor_raw));
    let pool = |size: u64, used: u64| PoolStatus {
        capacity: size,
        used,
        free: size.saturating_sub(used),
    };
    let counters = match Mapped::<InstanceCounters>::open(&paths.counters(), Some(token)) {
        Ok(c) => Counter::ALL
            .iter()
            .map(|&k| (k.name(), c.get().get(k)))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    Ok(Status {
        instance: paths.instance().to_owned(),
        supervisor: SupervisorStatus {
            pid: supervisor.map(|p| p.pid),
            alive: supervisor.is_some_and(ProcessId::is_alive),
            heartbeat_age_ms: now.saturating_sub(control.supervisor_heartbeat_ms.load(Relaxed)),
        },
        memory_pool: pool(
            control.pool_size.load(Relaxed),
            control.pool_used.load(Relaxed),
        ),
        block_pool: pool(
            control.block_pool_size.load(Relaxed),
            control.block_used.load(Relaxed),
        ),
        leases: reg
            .leases()
            .map(|l| LeaseStatus {
                id: l.lease_id,
                kind: match l.kind {
                    lease_kind::MEM => "mem",
                    lease_kind::BLOCK => "block",
                    _ => "?",
                },
                state: match l.state {
                    lease_state::ACTIVE => "active",
                    lease_state::EXPIRED => "expired",
                    lease_state::POISONED => "poisoned",
                    lease_state::UNLINKED => "unlinked",
                    _ => "?",
                },
                bytes: l.bytes,
                ttl_left_ms: l.deadline_ms.saturating_sub(now),
                holders: l.holders,
            })
            .collect(),
        participants: reg
            .participants()
            .map(|p| {
                let process = ProcessId::unpack(p.process);
                let alive = liveness_locked(&liveness_file(paths, process))
                    .unwrap_or_else(|| process.is_alive());
                ParticipantStatus {
                    incarnation: p.incarnation,
                    pid: process.pid,
                    alive,
                    heartbeat_age_ms: now.saturating_sub(p.heartbeat_ms),
                }
            })
            .collect(),
        queues: queues(paths.instance())?,
        maps: maps(paths.instance())?,
        topics: topics(paths.instance())?,
        workers: read_status(&paths.runtime_dir().join("workers.json")),
        counters,
    })
}

fn queues(instance: &str) -> Result<Vec<QueueStatus>, FabricError> {
    let mut out = Vec::new();
    for object in list_segments(instance)? {
        let Some(queue) = open_if_kind(instance, &object, SegmentKind::Queue) else {
            continue;
        };
        let snapshot = queue.and_then(FabricQueue::inspect);
        out.push(match snapshot {
            Ok(q) => QueueStatus {
                name: object,
                depth: q.positions.depth(),
                capacity: q.capacity,
                pushes: q.positions.tail,
                pops: q.positions.head,
                repairs: q.counters.repairs,
                tombstones: q.counters.claims_repaired + q.counters.seal_tombs,
                sealed: q.positions.sealed,
                error: None,
            },
            Err(e) => QueueStatus {
                name: object,
                depth: 0,
                capacity: 0,
                pushes: 0,
                pops: 0,
                repairs: 0,
                tombstones: 0,
                sealed: false,
                error: Some(e.to_string()),
            },
        });
    }
    Ok(out)
}

/// The instance's memory-lease segments that can be opened (where hash
/// maps and topics live), each opened as the iteration reaches it.
fn lease_segments(instance: &str) -> Result<impl Iterator<Item = Segment> + '_, FabricError> {
    Ok(list_segments(instance)?
        .into_iter()
        .filter(|object| object.starts_with("lease."))
        .filter_map(move |object| open_if_kind(instance, &object, SegmentKind::Raw)?.ok()))
}

fn maps(instance: &str) -> Result<Vec<MapStatus>, FabricError> {
    let mut out = Vec::new();
    for segment in lease_segments(instance)? {
        let lease_id = segment.fields().lease_id;
        let Ok(Some(map)) = FabricHashMap::inspect(segment, instance) else {
            continue;
        };
        let (Ok(stats), Ok(pins), Ok(writer)) = (map.stats(), map.pins(), map.lock_holder()) else {
            continue;
        };
        out.push(MapStatus {
            lease_id,
            entries: stats.entries,
            used_bytes: stats.used_bytes,
            retired_bytes: stats.retired_bytes,
            arenas: stats.arenas,
            arena_bytes: stats.arena_bytes,
            epoch: stats.epoch,
            pins: pins.len(),
            writer_pid: (writer != 0).then(|| ProcessId::unpack(writer).pid),
            repairs: stats.repairs,
        });
    }
    Ok(out)
}

fn topics(instance: &str) -> Result<Vec<TopicStatus>, FabricError> {
    let mut out = Vec::new();
    for segment in lease_segments(instance)? {
        let Ok(Some(topic)) = Topic::inspect(segment, instance) else {
            continue;
        };
        out.push(topic_status(topic.describe()));
    }
    Ok(out)
}

/// What `status` (and `grafos topic describe`) shows of a topic.
pub fn topic_status(d: TopicDescription) -> TopicStatus {
    TopicStatus {
        groups: d
            .groups
            .iter()
            .map(|g| TopicGroupStatus {
                name: g.name.clone(),
                holding: g.holding,
                live_members: g.live_members,
                committed: g.committed.clone(),
                lag: (0..d.partitions.len()).map(|p| d.lag(g, p)).collect(),
                generation: g.coordination.generation,
                evicted_dead: g.coordination.evicted_dead,
                evicted_silent: g.coordination.evicted_silent,
                moved: g.coordination.moved,
                rebalances_repaired: g.coordination.repaired,
                members: g
                    .members
                    .iter()
                    .map(|m| GroupMemberStatus {
                        name: m.name.clone(),
                        pid: m.pid,
                        heartbeat_age_ms: unix_time_ms().saturating_sub(m.heartbeat_ms),
                        session_ms: m.session_ms,
                        lag: m.partitions.iter().map(|&p| d.lag(g, p as usize)).sum(),
                        partitions: m.partitions.clone(),
                    })
                    .collect(),
            })
            .collect(),
        partitions: d
            .partitions
            .iter()
            .map(|p| PartitionStatus {
                head: p.head,
                tail: p.tail,
                overwrites: p.stats.overwrites,
                lost: p.stats.lost,
                holes: p.stats.holes,
            })
            .collect(),
        name: d.name,
        lease_id: d.lease_id,
        overflow: overflow_name(d.overflow),
        capacity: d.capacity,
        stride: d.stride,
        repairs: d.repairs,
    }
}

/// A topic as a table for people: its partitions (head, tail, counters,
/// each group's lag) and its groups.
pub fn render_topic(t: &TopicStatus) -> String {
    let mut out = format!(
        "TOPIC {} (lease {}, {} records of up to {} bytes per partition, {}, {} repairs)\n",
        t.name, t.lease_id, t.capacity, t.stride, t.overflow, t.repairs
    );
    let mut header = format!(
        "{:>9} {:>12} {:>12} {:>10} {:>8} {:>6}",
        "PARTITION", "HEAD", "TAIL", "OVERWRITES", "LOST", "HOLES"
    );
    for g in &t.groups {
        header += &format!(" {:>12}", format!("LAG {}", g.name));
    }
    let _ = writeln!(out, "{header}");
    for (i, p) in t.partitions.iter().enumerate() {
        let mut row = format!(
            "{:>9} {:>12} {:>12} {:>10} {:>8} {:>6}",
            i, p.head, p.tail, p.overwrites, p.lost, p.holes
        );
        for g in &t.groups {
            row += &format!(" {:>12}", g.lag[i]);
        }
        let _ = writeln!(out, "{row}");
    }
    for g in &t.groups {
        let _ = writeln!(
            out,
            "group {}: {} live member(s){}, committed {:?}",
            g.name,
            g.live_members,
            if g.holding {
                ", holding producers back"
            } else {
                ""
            },
            g.committed
        );
        if g.generation > 0 {
            let _ = writeln!(
                out,
                "  generation {}, {} partition move(s), evicted {} dead and {} silent",
                g.generation, g.moved, g.evicted_dead, g.evicted_silent
            );
        }
        for m in &g.members {
            let _ = writeln!(
                out,
                "  member {:<16} pid {:<8} heartbeat {:>6} ms ago (session {} ms)  partitions {:?}  lag {}",
                m.name, m.pid, m.heartbeat_age_ms, m.session_ms, m.partitions, m.lag
            );
        }
    }
    out
}

/// How an overflow policy is spelled in status and CLI output.
pub fn overflow_name(overflow: grafos_worker::mq::topic::Overflow) -> &'static str {
    match overflow {
        grafos_worker::mq::topic::Overflow::Overwrite => "overwrite",
        grafos_worker::mq::topic::Overflow::Backpressure => "backpressure",
    }
}

/// The status as tables for people.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let s = &status.supervisor;
    let _ = writeln!(
        out,
        "instance {}: supervisor {} (heartbeat {} ms ago)",
        status.instance,
        match (s.pid, s.alive) {
            (Some(pid), true) => format!("pid {pid} running"),
            (Some(pid), false) => format!("pid {pid} DEAD"),
            (None, _) => "not running".to_owned(),
        },
        s.heartbeat_age_ms
    );
    for (what, pool) in [
        ("memory", &status.memory_pool),
        ("block", &status.block_pool),
    ] {
        let _ = writeln!(
            out,
            "{what} pool: {} of {} bytes used, {} free",
            pool.used, pool.capacity, pool.free
        );
    }
    let _ = writeln!(out, "\nLEASES");
    let _ = writeln!(
        out,
        "{:>6} {:<5} {:<8} {:>12} {:>10} {:>7}",
        "ID", "KIND", "STATE", "BYTES", "TTL LEFT", "HOLDERS"
    );
    for l in &status.leases {
        let _ = writeln!(
            out,
            "{:>6} {:<5} {:<8} {:>12} {:>9.1}s {:>7}",
            l.id,
            l.kind,
            l.state,
            l.bytes,
            l.ttl_left_ms as f64 / 1000.0,
            l.holders
        );
    }
    let _ = writeln!(out, "\nPARTICIPANTS");
    let _ = writeln!(
        out,
        "{:>11} {:>8} {:<5} {:>13}",
        "INCARNATION", "PID", "ALIVE", "HEARTBEAT AGE"
    );
    for p in &status.participants {
        let _ = writeln!(
            out,
            "{:>11} {:>8} {:<5} {:>11}ms",
            p.incarnation,
            p.pid,
            if p.alive { "yes" } else { "NO" },
            p.heartbeat_age_ms
        );
    }
    let _ = writeln!(out, "\nQUEUES");
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:>8} {:>10} {:>10} {:>7} {:>10}",
        "NAME", "DEPTH", "SLOTS", "PUSHES", "POPS", "REPAIRS", "TOMBSTONES"
    );
    for q in &status.queues {
        match &q.error {
            Some(e) => {
                let _ = writeln!(out, "{:<28} unreadable: {e}", q.name);
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<28} {:>7} {:>8} {:>10} {:>10} {:>7} {:>10}{}",
                    q.name,
                    q.depth,
                    q.capacity,
                    q.pushes,
                    q.pops,
                    q.repairs,
                    q.tombstones,
                    if q.sealed { " sealed" } else { "" }
                );
            }
        }
    }
    if !status.maps.is_empty() {
        let _ = writeln!(out, "\nMAPS");
        let _ = writeln!(
            out,
            "{:>6} {:>9} {:>12} {:>12} {:>6} {:>12} {:>8} {:>4} {:>8} {:>7}",
            "LEASE",
            "ENTRIES",
            "USED",
            "RETIRED",
            "ARENAS",
            "ARENA BYTES",
            "EPOCH",
            "PINS",
            "WRITER",
            "REPAIRS"
        );
        for m in &status.maps {
            let _ = writeln!(
                out,
                "{:>6} {:>9} {:>12} {:>12} {:>6} {:>12} {:>8} {:>4} {:>8} {:>7}",
                m.lease_id,
                m.entries,
                m.used_bytes,
                m.retired_bytes,
                m.arenas,
                m.arena_bytes,
                m.epoch,
                m.pins,
                m.writer_pid
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                m.repairs
            );
        }
    }
    for t in &status.topics {
        let _ = write!(out, "\n{}", render_topic(t));
    }
    if let Some(group) = &status.workers {
        let _ = writeln!(
            out,
            "\nWORKERS ({:?}, {}{})",
            group.strategy,
            group.state,
            group
                .reason
                .as_ref()
                .map_or_else(String::new, |r| format!(": {r}"))
        );
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>8} {:>8}  LAST EXIT",
            "ID", "STATE", "PID", "RESTARTS"
        );
        for w in &group.workers {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:>8} {:>8}  {}",
                w.id,
                w.state,
                w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                w.restarts,
                w.last_exit.as_deref().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(out, "\nCOUNTERS");
    for (name, value) in &status.counters {
        let _ = writeln!(out, "{name:<24} {value}");
    }
    out
}

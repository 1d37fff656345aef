//! [`ConsumerGroup`]: named members of a consumer group share a topic's
//! partitions, coordinated in the topic's own shared memory.
//!
//! ```no_run
//! use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
//! use grafos_worker::mq::group::ConsumerGroup;
//! use grafos_worker::mq::topic::TopicManager;
//! # fn main() -> grafos_worker::Result<()> {
//! let topics = TopicManager::new();
//! let mut group = ConsumerGroup::new("processors", "object-events", 4, 30)?;
//! let mut consumer = Consumer::new("object-events", "processors");
//! consumer.assign(&group.claim("worker-1")?);
//! consumer.seek(&topics, &group, SeekPolicy::Committed)?;
//! loop {
//!     for (partition, message) in consumer.poll_timeout(&topics, 100, std::time::Duration::from_millis(10))? {
//!         // ... handle the record ...
//!     }
//!     // Refused (`Fenced`) for partitions that moved to another member.
//!     let _ = consumer.commit(&mut group);
//!     if group.heartbeat("worker-1")? {
//!         consumer.assign(&group.claim("worker-1")?);
//!         consumer.seek(&topics, &group, SeekPolicy::Committed)?;
//!     }
//! }
//! # }
//! ```
//!
//! A member whose process is dead loses its partitions as soon as anyone
//! looks: the other members' heartbeats and the supervisor (when it sees a
//! process die) evict it and rebalance. The session timeout covers members
//! alive but silent (no heartbeat for that long). Committed offsets are the
//! group's cursors in the topic; a new owner starts from them, so records
//! read and not committed by the previous owner are read again
//! (at-least-once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grafos_shm_layout::topic::{GroupId, MemberId, Owned, TopicError};

use crate::error::{FabricError, Result};
use crate::mq::offset::OffsetStore;
use crate::mq::topic::{Topic, TopicManager};

/// How often a heartbeat also looks for dead and silent members (one
/// liveness check per member).
const EVICTION_CHECK: Duration = Duration::from_millis(5);

/// A member this handle claimed for.
#[derive(Debug)]
struct Membership {
    id: MemberId,
    owned: Vec<Owned>,
    /// The group generation `owned` was read at.
    generation: u64,
}

/// A handle on consumer group `group` of `topic` for the members claimed
/// through it (a process usually claims one).
#[derive(Debug)]
pub struct ConsumerGroup {
    name: String,
    topic_name: String,
    session: Duration,
    topic: Arc<Topic>,
    group: GroupId,
    members: BTreeMap<String, Membership>,
    last_eviction_check: Instant,
}

impl ConsumerGroup {
    /// Group `group` of `topic` (which must exist with `partitions`
    /// partitions) in the instance `GRAFOS_INSTANCE` names; members silent
    /// for `session_timeout_secs` lose their partitions.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic; `InvalidArgument` for another
    /// partition count or a zero timeout; `Topic` (`BadGroupName`,
    /// `TooManyGroups`); lease errors.
    pub fn new(
        group: &str,
        topic: &str,
        partitions: u32,
        session_timeout_secs: u64,
    ) -> Result<ConsumerGroup> {
        ConsumerGroup::with_manager(
            &TopicManager::new(),
            group,
            topic,
            partitions,
            Duration::from_secs(session_timeout_secs),
        )
    }

    /// As [`ConsumerGroup::new`], with the topic found through `topics`
    /// and the session timeout at any precision.
    ///
    /// # Errors
    /// As [`ConsumerGroup::new`].
    pub fn with_manager(
        topics: &TopicManager,
        group: &str,
        topic: &str,
        partitions: u32,
        session: Duration,
    ) -> Result<ConsumerGroup> {
        if session.is_zero() {
            return Err(FabricError::InvalidArgument(
                "a consumer group's session timeout is above zero".into(),
            ));
        }
        let handle = topics.open(topic)?;
        if handle.partitions() != partitions {
            return Err(FabricError::InvalidArgument(format!(
                "topic {topic} has {} partitions, not {partitions}",
                handle.partitions()
            )));
        }
        let id = handle.group(group)?;
        Ok(ConsumerGroup {
            name: group.to_string(),
            topic_name: topic.to_string(),
            session,
            topic: handle,
            group: id,
            members: BTreeMap::new(),
            last_eviction_check: Instant::now(),
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic_name
    }

    /// Joins `member` to the group (or finds it there) and returns the
    /// partitions it owns now. A member of that name left by a dead
    /// process is replaced; joining rebalances the group.
    ///
    /// # Errors
    /// `Topic` (`MemberTaken` while another live process is that member,
    /// `BadMemberName`, `TooManyMembers`, `AdminBusy`); lease errors.
    pub fn claim(&mut self, member: &str) -> Result<Vec<u32>> {
        self.topic.check()?;
        let session_ms = u64::try_from(self.session.as_millis()).unwrap_or(u64::MAX);
        let generation = self.topic.generation(self.group);
        let (id, owned) = self.topic.claim_member(self.group, member, session_ms)?;
        let membership = Membership {
            id,
            owned,
            generation,
        };
        let partitions = partitions(&membership.owned);
        self.members.insert(member.to_string(), membership);
        Ok(partitions)
    }

    /// Tells the group `member` is alive, evicting members found dead or
    /// silent (at most every few milliseconds). Returns whether the
    /// member's partitions changed since it last claimed (or it was
    /// evicted): claim again then, and reassign the consumer.
    ///
    /// # Errors
    /// `InvalidArgument` if `member` was never claimed through this
    /// handle; lease errors.
    pub fn heartbeat(&mut self, member: &str) -> Result<bool> {
        let Some(m) = self.members.get(member) else {
            return Err(FabricError::InvalidArgument(format!(
                "{member} is not a member claimed through this handle"
            )));
        };
        match self.topic.heartbeat(self.group, m.id) {
            Ok(_) => {}
            Err(FabricError::Topic {
                source: TopicError::NotMember,
                ..
            }) => {
                self.members.remove(member);
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        if self.last_eviction_check.elapsed() >= EVICTION_CHECK {
            self.last_eviction_check = Instant::now();
            self.topic.keep_alive();
            match self.topic.evict_members(self.group) {
                // Another live process holds the admin lock (rebalancing,
                // most likely): the next look tries again.
                Err(FabricError::Topic {
                    source: TopicError::AdminBusy,
                    ..
                }) => {}
                other => {
                    other?;
                }
            }
        }
        let m = self.members.get_mut(member).expect("looked up above");
        // After the eviction check: a rebalance it made is seen now.
        let now = self.topic.generation(self.group);
        if now == m.generation {
            return Ok(false);
        }
        let owned = match self.topic.assignment(self.group, m.id) {
            Ok(owned) => owned,
            Err(FabricError::Topic {
                source: TopicError::NotMember,
                ..
            }) => {
                self.members.remove(member);
                return Ok(true);
            }
            // A rebalance in progress (or cut short: the eviction check
            // repairs it): look again at the next heartbeat.
            Err(FabricError::Topic {
                source: TopicError::Rebalancing,
                ..
            }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let changed = owned != m.owned;
        m.generation = now;
        m.owned = owned;
        Ok(changed)
    }

    /// The partitions `member` owned at its last claim.
    pub fn assignment(&self, member: &str) -> Vec<u32> {
        self.members
            .get(member)
            .map_or_else(Vec::new, |m| partitions(&m.owned))
    }

    /// The group's generation (bumped by every rebalance).
    pub fn generation(&self) -> u64 {
        self.topic.generation(self.group)
    }

    /// Removes `member` from the group; its partitions go to the others
    /// at once.
    ///
    /// # Errors
    /// `Topic` (`AdminBusy`); lease errors.
    pub fn leave(&mut self, member: &str) -> Result<()> {
        if let Some(m) = self.members.remove(member) {
            self.topic.leave_member(self.group, m.id)?;
        }
        Ok(())
    }

    /// The owned partition `p` as some member of this handle holds it.
    fn owned(&self, p: u32) -> Option<Owned> {
        self.members
            .values()
            .flat_map(|m| &m.owned)
            .find(|o| o.partition == u64::from(p))
            .copied()
    }
}

/// The partition numbers of `owned`.
fn partitions(owned: &[Owned]) -> Vec<u32> {
    owned.iter().map(|o| o.partition as u32).collect()
}

/// The group's committed offsets are its cursors in the topic; saving
/// commits only partitions a member of this handle still owns.
impl OffsetStore for ConsumerGroup {
    type Error = FabricError;

    /// The group's cursor, or the oldest record retained if that is
    /// later (records before it were overwritten, or the group is new).
    fn committed(&self, topic: &str, group: &str, partition: u32) -> Result<Option<u64>> {
        self.same(topic, group)?;
        let cursor = self.topic.cursor(self.group, partition)?;
        Ok(Some(cursor.max(self.topic.tail(partition)?)))
    }

    /// # Errors
    /// `Topic` (`Fenced`) for the first partition no member of this
    /// handle owns any more (the others are committed).
    fn save(&mut self, topic: &str, group: &str, offsets: &[(u32, u64)]) -> Result<()> {
        self.same(topic, group)?;
        let mut refused = None;
        for &(p, at) in offsets {
            let outcome = match self.owned(p) {
                Some(owned) => self.topic.commit_owned(self.group, owned, at),
                None => Err(FabricError::Topic {
                    topic: self.topic_name.clone(),
                    source: TopicError::Fenced {
                        partition: u64::from(p),
                    },
                }),
            };
            if let Err(e) = outcome {
                refused.get_or_insert(e);
            }
        }
        refused.map_or(Ok(()), Err)
    }
}

impl ConsumerGroup {
    fn same(&self, topic: &str, group: &str) -> Result<()> {
        if topic == self.topic_name && group == self.name {
            Ok(())
        } else {
            Err(FabricError::InvalidArgument(format!(
                "offsets of {topic}/{group} asked of the group handle of {}/{}",
                self.topic_name, self.name
            )))
        }
    }
}

impl Drop for ConsumerGroup {
    /// Members claimed through the handle leave the group (a process
    /// that exits cleanly hands its partitions over at once).
    fn drop(&mut self) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            let _ = self.leave(&name);
        }
    }
}

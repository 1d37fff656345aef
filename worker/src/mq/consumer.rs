//! [`Consumer`]: reads assigned partitions of a topic for a consumer
//! group, at offsets of its own, and commits them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grafos_shm_layout::topic::{GroupId, Read};

use crate::error::{FabricError, Result};
use crate::mq::offset::OffsetStore;
use crate::mq::topic::{Topic, TopicManager, WAIT_YIELDS};

/// Where a consumer starts reading its partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekPolicy {
    /// The oldest record retained.
    Earliest,
    /// After the newest record: only what is appended from now on.
    Latest,
    /// The group's committed offset from the offset store; else the
    /// group's cursor in the topic (backpressure groups); else the oldest.
    Committed,
}

/// A record as polled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its absolute offset in its partition.
    pub offset: u64,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// Reads the partitions assigned to it, for one consumer group. Offsets
/// are the consumer's own; [`Consumer::commit`] saves them in an offset
/// store and in the topic (where a backpressure topic's producers wait for
/// them). Delivery is at-least-once: a consumer that restarts from its
/// committed offsets sees again what it polled and did not commit.
#[derive(Debug)]
pub struct Consumer {
    topic: String,
    group: String,
    assigned: Vec<u32>,
    /// Next offset to read, by partition.
    positions: BTreeMap<u32, u64>,
    bound: Option<(Arc<Topic>, GroupId)>,
    /// Where the next poll starts (fairness across partitions).
    turn: usize,
    lost: u64,
    /// A lag found while a poll had records to return: reported by the
    /// next poll (the position has moved on already).
    pending_lag: Option<(u32, u64, u64)>,
}

impl Consumer {
    /// A consumer of `topic` in `group` with no partitions assigned.
    pub fn new(topic: &str, group: &str) -> Consumer {
        Consumer {
            topic: topic.to_string(),
            group: group.to_string(),
            assigned: Vec::new(),
            positions: BTreeMap::new(),
            bound: None,
            turn: 0,
            lost: 0,
            pending_lag: None,
        }
    }

    /// Reads `partitions` from now on (positions of partitions no longer
    /// assigned are dropped; new ones start as the next `seek` says, or at
    /// the group's committed cursor).
    pub fn assign(&mut self, partitions: &[u32]) {
        let mut assigned = partitions.to_vec();
        assigned.sort_unstable();
        assigned.dedup();
        self.positions.retain(|p, _| assigned.contains(p));
        self.assigned = assigned;
        self.pending_lag = None;
    }

    /// The partitions assigned.
    pub fn assignment(&self) -> &[u32] {
        &self.assigned
    }

    /// The next offset this consumer reads in `partition`, once known.
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.positions.get(&partition).copied()
    }

    /// Records this consumer found overwritten before it read them.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The topic handle and group entry, bound on first use (joining the
    /// group: it holds producers back under backpressure from now on). A
    /// group found no longer holding (released as idle while this member
    /// was silent) is made to hold again.
    fn bind(&mut self, topics: &TopicManager) -> Result<(Arc<Topic>, GroupId)> {
        if let Some((topic, group)) = &self.bound
            && topic.check().is_ok()
        {
            if !topic.holds(*group) {
                topic.join(*group)?;
            }
            return Ok((Arc::clone(topic), *group));
        }
        let topic = topics.open(&self.topic)?;
        if let Some(&bad) = self.assigned.iter().find(|&&p| p >= topic.partitions()) {
            return Err(FabricError::InvalidArgument(format!(
                "topic {} has {} partitions; there is no partition {bad}",
                self.topic,
                topic.partitions()
            )));
        }
        let group = topic.group(&self.group)?;
        topic.join(group)?;
        if let Some((old, old_group)) = self.bound.take() {
            old.leave(old_group);
            if old.lease_id() != topic.lease_id() {
                // Another topic of the same name: old positions mean
                // nothing in it.
                self.positions.clear();
                self.pending_lag = None;
            }
        }
        self.bound = Some((Arc::clone(&topic), group));
        Ok((topic, group))
    }

    /// Sets the position of every assigned partition as `policy` says.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic; `InvalidArgument` for a partition
    /// out of range; the offset store's errors.
    pub fn seek<S: OffsetStore>(
        &mut self,
        topics: &TopicManager,
        offsets: &S,
        policy: SeekPolicy,
    ) -> Result<()> {
        let (topic, group) = self.bind(topics)?;
        self.pending_lag = None;
        for &p in &self.assigned {
            let (oldest, head) = (topic.tail(p)?, topic.head(p)?);
            let at = match policy {
                SeekPolicy::Earliest => oldest,
                SeekPolicy::Latest => head,
                SeekPolicy::Committed => match offsets
                    .committed(&self.topic, &self.group, p)
                    .map_err(Into::into)?
                {
                    Some(at) => at,
                    None => topic.cursor(group, p)?.max(oldest),
                },
            };
            // A committed offset past the head (a store from an older
            // topic of the same name) starts at the head.
            self.positions.insert(p, at.min(head));
        }
        Ok(())
    }

    /// Up to `max` records from the assigned partitions, without waiting:
    /// `(partition, message)` pairs in offset order within each partition.
    ///
    /// # Errors
    /// `Lagged` when the next record of a partition was overwritten before
    /// it was read (the position moves on to the oldest record retained,
    /// so the next poll goes on; found after some records were read, it
    /// comes with the next poll); `Topic` (`Corrupt`); lease errors. A
    /// failure after some records were read returns them, and comes again
    /// with the next poll.
    pub fn poll(&mut self, topics: &TopicManager, max: usize) -> Result<Vec<(u32, Message)>> {
        let mut out = Vec::new();
        self.poll_each(topics, max, |partition, offset, payload| {
            let payload = std::mem::take(payload);
            out.push((partition, Message { offset, payload }));
        })?;
        Ok(out)
    }

    /// As [`Consumer::poll`], handing each record to `f` as `(partition,
    /// offset, bytes)` instead of returning it: the bytes are a copy
    /// already checked whole, in one buffer reused from record to record,
    /// so nothing is allocated per record. Returns the records handed over.
    ///
    /// # Errors
    /// As [`Consumer::poll`].
    pub fn poll_with(
        &mut self,
        topics: &TopicManager,
        max: usize,
        mut f: impl FnMut(u32, u64, &[u8]),
    ) -> Result<usize> {
        self.poll_each(topics, max, |partition, offset, payload| {
            f(partition, offset, payload);
        })
    }

    /// Reads up to `max` records round-robin over the assigned partitions,
    /// handing each to `sink` (which may take the buffer); returns how
    /// many.
    fn poll_each(
        &mut self,
        topics: &TopicManager,
        max: usize,
        mut sink: impl FnMut(u32, u64, &mut Vec<u8>),
    ) -> Result<usize> {
        let (topic, group) = self.bind(topics)?;
        if let Some((partition, lost, resume)) = self.pending_lag.take() {
            return Err(FabricError::Lagged {
                topic: self.topic.clone(),
                partition,
                lost,
                resume,
            });
        }
        topic.touch(group);
        topic.keep_alive();
        let mut got = 0;
        let mut buf = Vec::new();
        let n = self.assigned.len();
        for i in 0..n {
            if got >= max {
                break;
            }
            let p = self.assigned[(self.turn + i) % n];
            match self.poll_partition(&topic, group, p, max, &mut got, &mut buf, &mut sink) {
                Ok(None) => {}
                Ok(Some(lag)) if got == 0 => {
                    self.turn = (self.turn + i + 1) % n;
                    return Err(lag);
                }
                Ok(Some(FabricError::Lagged {
                    partition,
                    lost,
                    resume,
                    ..
                })) => {
                    // Reported by the next poll, after what was read.
                    self.pending_lag = Some((partition, lost, resume));
                    break;
                }
                Ok(Some(other)) => return Err(other),
                // What was read is handed over; the error comes again at
                // the next poll (the position stays before it).
                Err(_) if got > 0 => break,
                Err(e) => {
                    self.turn = (self.turn + i + 1) % n;
                    return Err(e);
                }
            }
        }
        if n > 0 {
            self.turn = (self.turn + 1) % n;
        }
        Ok(got)
    }

    /// Reads partition `p` into `sink` while `got` is below `max`, keeping
    /// its position after what was read. A lag moves the position to the
    /// oldest record retained and is returned.
    ///
    /// # Errors
    /// A read failed (the position stays after the records read).
    #[allow(clippy::too_many_arguments)] // one call site, all of them state
    fn poll_partition(
        &mut self,
        topic: &Topic,
        group: GroupId,
        p: u32,
        max: usize,
        got: &mut usize,
        buf: &mut Vec<u8>,
        sink: &mut impl FnMut(u32, u64, &mut Vec<u8>),
    ) -> Result<Option<FabricError>> {
        let oldest = topic.tail(p)?;
        let mut at = match self.positions.get(&p) {
            Some(&at) => at,
            None => topic.cursor(group, p)?.max(oldest),
        };
        // A position a whole lap or more behind is lagged whatever its
        // slot's 32-bit stamp says (it could show a record 2^32 laps on).
        if at < oldest {
            let lost = oldest - at;
            self.lost += lost;
            self.positions.insert(p, oldest);
            return Ok(Some(FabricError::Lagged {
                topic: self.topic.clone(),
                partition: p,
                lost,
                resume: oldest,
            }));
        }
        let result = loop {
            if *got >= max {
                break Ok(None);
            }
            match topic.read(p, at, buf) {
                Ok(Read::Record) => {
                    sink(p, at, buf);
                    *got += 1;
                    at += 1;
                }
                Ok(Read::Hole) => at += 1,
                Ok(Read::Pending(_)) => break Ok(None),
                Ok(Read::Lagged { lost, resume }) => {
                    self.lost += lost;
                    at = resume;
                    break Ok(Some(FabricError::Lagged {
                        topic: self.topic.clone(),
                        partition: p,
                        lost,
                        resume,
                    }));
                }
                Err(e) => break Err(e),
            }
        };
        self.positions.insert(p, at);
        result
    }

    /// As [`Consumer::poll`], waiting up to `timeout` for a first record
    /// (asleep on the first eight assigned partitions' wait points; others
    /// are looked at every 10 ms).
    ///
    /// # Errors
    /// As [`Consumer::poll`].
    pub fn poll_timeout(
        &mut self,
        topics: &TopicManager,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<(u32, Message)>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut yields = 0;
        loop {
            let got = self.poll(topics, max)?;
            if !got.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(got);
            }
            self.wait(topics, &mut yields, deadline)?;
        }
    }

    /// As [`Consumer::poll_with`], waiting up to `timeout` for a first
    /// record.
    ///
    /// # Errors
    /// As [`Consumer::poll`].
    pub fn poll_with_timeout(
        &mut self,
        topics: &TopicManager,
        max: usize,
        timeout: Duration,
        mut f: impl FnMut(u32, u64, &[u8]),
    ) -> Result<usize> {
        let deadline = Instant::now().checked_add(timeout);
        let mut yields = 0;
        loop {
            let got = self.poll_with(topics, max, &mut f)?;
            if got > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(got);
            }
            self.wait(topics, &mut yields, deadline)?;
        }
    }

    /// One wait of a blocked poll: a yield while `yields` lasts (with more
    /// processes than cores, giving the CPU to a producer is quicker than
    /// a futex round trip), then a sleep until a record may be readable,
    /// a liveness period, or `deadline`.
    fn wait(
        &mut self,
        topics: &TopicManager,
        yields: &mut u32,
        deadline: Option<Instant>,
    ) -> Result<()> {
        if *yields < WAIT_YIELDS {
            *yields += 1;
            std::thread::yield_now();
            return Ok(());
        }
        let (topic, _) = self.bind(topics)?;
        let waiting: Vec<(u32, u64)> = self
            .assigned
            .iter()
            .filter_map(|&p| Some((p, *self.positions.get(&p)?)))
            .collect();
        if waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        } else {
            topic.wait_for_data(&waiting, deadline);
        }
        Ok(())
    }

    /// Commits the positions after everything polled: saves them in
    /// `offsets`, then in the topic (releasing backpressure).
    ///
    /// # Errors
    /// The offset store's errors (nothing is committed in the topic then);
    /// for [`crate::mq::offset::MemOffsetStore`] none.
    pub fn commit<S: OffsetStore>(&mut self, offsets: &mut S) -> Result<(), S::Error> {
        let positions: Vec<(u32, u64)> = self.positions.iter().map(|(&p, &at)| (p, at)).collect();
        offsets.save(&self.topic, &self.group, &positions)?;
        if let Some((topic, group)) = &self.bound {
            for &(p, at) in &positions {
                // In range: positions are only kept for assigned
                // partitions checked against the topic at bind.
                let _ = topic.commit(*group, p, at);
            }
        }
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some((topic, group)) = &self.bound {
            topic.leave(*group);
        }
    }
}

//! [`Producer`]: appends records to a topic's partitions.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{FabricError, Result};
use crate::mq::topic::{Topic, TopicManager};

/// How long a send waits for room under backpressure unless set
/// otherwise.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends records to one topic: round-robin over its partitions, by key,
/// or to a partition named by the caller. A send returns once the record
/// is published (acknowledged): every consumer group that reads the
/// partition from before its offset gets it.
#[derive(Clone, Debug)]
pub struct Producer {
    topic: String,
    next: u32,
    timeout: Option<Duration>,
    /// The topic as last opened, kept so a send does not look the name up
    /// again; dropped when it ends (deleted, expired).
    opened: Option<Arc<Topic>>,
}

impl Producer {
    /// A producer for `topic` (opened on the first send).
    pub fn new(topic: &str) -> Producer {
        Producer {
            topic: topic.to_string(),
            // Producers of different processes start at different
            // partitions.
            next: std::process::id(),
            timeout: Some(DEFAULT_SEND_TIMEOUT),
            opened: None,
        }
    }

    /// How long a send waits for room under backpressure (`None`: for
    /// ever).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Producer {
        self.timeout = timeout;
        self
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `payload` to the next partition in turn; returns
    /// `(partition, offset)`.
    ///
    /// # Errors
    /// `NotFound` for an unknown topic; `Topic` (`TooLarge`, `TimedOut`
    /// under backpressure, ...); lease errors.
    pub fn send(&mut self, topics: &mut TopicManager, payload: &[u8]) -> Result<(u32, u64)> {
        let next = self.next;
        self.next = self.next.wrapping_add(1);
        let timeout = self.timeout;
        self.with_topic(topics, |topic| {
            let partition = next % topic.partitions();
            Ok((partition, topic.append(partition, payload, timeout)?))
        })
    }

    /// Sends `payload` to the partition `key` hashes to (records of one key
    /// stay in order).
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub fn send_keyed(
        &mut self,
        topics: &mut TopicManager,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(u32, u64)> {
        let timeout = self.timeout;
        self.with_topic(topics, |topic| {
            let partition =
                (grafos_shm_layout::map::hash_key(key) % u64::from(topic.partitions())) as u32;
            Ok((partition, topic.append(partition, payload, timeout)?))
        })
    }

    /// Sends `payload` to `partition`.
    ///
    /// # Errors
    /// As [`Producer::send`]; `InvalidArgument` for a partition out of
    /// range.
    pub fn send_to(
        &mut self,
        topics: &mut TopicManager,
        partition: u32,
        payload: &[u8],
    ) -> Result<u64> {
        let timeout = self.timeout;
        self.with_topic(topics, |topic| topic.append(partition, payload, timeout))
    }

    /// Runs `send` on the topic as last opened; if that handle has ended
    /// (the topic was deleted, its lease expired) or was opened before a
    /// fork, opens the name again (it may be a topic made anew) and runs
    /// `send` there.
    fn with_topic<T>(
        &mut self,
        topics: &TopicManager,
        send: impl Fn(&Topic) -> Result<T>,
    ) -> Result<T> {
        if let Some(topic) = self.opened.as_ref().filter(|t| t.opened_here()) {
            match send(topic) {
                Err(FabricError::NotFound(_) | FabricError::LeaseExpired(_)) => {}
                done => return done,
            }
        }
        self.opened = None;
        let topic = topics.open(&self.topic)?;
        let done = send(&topic);
        self.opened = Some(topic);
        done
    }
}

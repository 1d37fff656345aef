//! [`DlqRouter`]: a record that keeps failing goes to a dead-letter topic,
//! with its error and attempt count, instead of blocking its partition.
//!
//! ```no_run
//! use grafos_worker::mq::dlq::{DlqRouter, Handled};
//! # fn main() -> grafos_worker::Result<()> {
//! # let mut topics = grafos_worker::mq::topic::TopicManager::new();
//! # let message = grafos_worker::mq::consumer::Message { offset: 0, payload: vec![] };
//! let mut dlq = DlqRouter::new("object-events.dlq", 3);
//! match dlq.handle(&mut topics, "object-events", 0, &message, |m| {
//!     std::str::from_utf8(&m.payload).map(str::len)
//! })? {
//!     Handled::Done(len) => println!("{len} bytes"),
//!     Handled::DeadLettered { attempts, .. } => println!("gave up after {attempts}"),
//! }
//! # Ok(()) }
//! ```

use std::fmt::Display;

use crate::error::{FabricError, Result};
use crate::jobs::RetryPolicy;
use crate::mq::consumer::Message;
use crate::mq::producer::Producer;
use crate::mq::topic::TopicManager;

/// First bytes of an encoded [`DeadLetter`].
const MAGIC: &[u8; 4] = b"DLQ1";
/// Longest error text a dead letter keeps, in bytes (longer ones are cut
/// at a character boundary, so the letter fits the topic's stride).
pub const MAX_ERROR_BYTES: usize = 256;

/// A record that failed every attempt, as the dead-letter topic holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The topic it came from.
    pub topic: String,
    /// Its partition there.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// The record's bytes.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// The record's bytes: `DLQ1`, attempts (u32), partition (u32),
    /// offset (u64), topic and error (each a u32 length and UTF-8 bytes),
    /// then the payload; integers little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + self.topic.len() + self.error.len() + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        for text in [&self.topic, &self.error] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes what [`DeadLetter::encode`] made.
    ///
    /// # Errors
    /// `Codec` for bytes that are not a dead letter (wrong magic, a
    /// length past the end, text that is not UTF-8).
    pub fn decode(bytes: &[u8]) -> Result<DeadLetter> {
        let bad = |why: &str| FabricError::Codec(format!("dead letter: {why}"));
        let mut rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("no DLQ1 magic"))?;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let attempts = u32_of(take(4)?);
        let partition = u32_of(take(4)?);
        let offset = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let mut text = || -> Result<String> {
            let len = u32_of(take(4)?) as usize;
            String::from_utf8(take(len)?.to_vec()).map_err(|_| bad("text is not UTF-8"))
        };
        let topic = text()?;
        let error = text()?;
        Ok(DeadLetter {
            topic,
            partition,
            offset,
            attempts,
            error,
            payload: rest.to_vec(),
        })
    }
}

/// What [`DlqRouter::handle`] did with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled<T> {
    /// An attempt succeeded with this value.
    Done(T),
    /// Every attempt failed: the record went to the dead-letter topic.
    DeadLettered {
        /// Attempts made.
        attempts: u32,
        /// The dead letter's partition and offset in the dead-letter
        /// topic.
        at: (u32, u64),
    },
}

/// Retries a record's handling and sends it to a dead-letter topic once
/// the attempts run out.
#[derive(Debug)]
pub struct DlqRouter {
    policy: RetryPolicy,
    producer: Producer,
    dead_lettered: u64,
}

impl DlqRouter {
    /// Dead-letters to `dlq_topic` (which must exist) after
    /// `max_attempts` failed attempts, retrying at once.
    pub fn new(dlq_topic: &str, max_attempts: u32) -> DlqRouter {
        DlqRouter::with_policy(dlq_topic, RetryPolicy::immediate(max_attempts))
    }

    /// Dead-letters to `dlq_topic` once `policy`'s attempts fail, waiting
    /// its backoff between them.
    pub fn with_policy(dlq_topic: &str, policy: RetryPolicy) -> DlqRouter {
        DlqRouter {
            policy,
            producer: Producer::new(dlq_topic),
            dead_lettered: 0,
        }
    }

    /// The dead-letter topic.
    pub fn dlq_topic(&self) -> &str {
        self.producer.topic()
    }

    /// Records sent to the dead-letter topic through this router.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered
    }

    /// Runs `work` on `message` (from `partition` of `topic`) until it
    /// succeeds or the attempts run out; then sends a [`DeadLetter`] with
    /// the last error and the attempt count to the dead-letter topic (on
    /// the same partition number, modulo its partition count).
    ///
    /// The attempts run one after the other in the calling thread (with
    /// the policy's backoff between them): keep the backoff short beside
    /// a consumer group's session timeout.
    ///
    /// # Errors
    /// The dead-letter topic's errors (`NotFound`, `Topic(TooLarge)` when
    /// the dead letter exceeds its stride, ...): the record was then not
    /// dead-lettered. A consumer has already moved past it, so end
    /// without committing (a restart reads it again), or seek back.
    pub fn handle<T, E: Display>(
        &mut self,
        topics: &mut TopicManager,
        topic: &str,
        partition: u32,
        message: &Message,
        mut work: impl FnMut(&Message) -> std::result::Result<T, E>,
    ) -> Result<Handled<T>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match work(message) {
                Ok(value) => return Ok(Handled::Done(value)),
                Err(e) if self.policy.retries_after(attempt) => {
                    std::thread::sleep(self.policy.backoff(attempt));
                    tracing::debug!(
                        topic,
                        partition,
                        offset = message.offset,
                        attempt,
                        "retrying: {e}"
                    );
                }
                Err(e) => {
                    let letter = DeadLetter {
                        topic: topic.to_string(),
                        partition,
                        offset: message.offset,
                        attempts: attempt,
                        error: truncate(e.to_string(), MAX_ERROR_BYTES),
                        payload: message.payload.clone(),
                    };
                    let at = self.send(topics, &letter)?;
                    tracing::warn!(
                        topic,
                        partition,
                        offset = message.offset,
                        attempts = attempt,
                        dlq = self.dlq_topic(),
                        "dead-lettered: {e}"
                    );
                    return Ok(Handled::DeadLettered {
                        attempts: attempt,
                        at,
                    });
                }
            }
        }
    }

    /// Sends `letter` to the dead-letter topic.
    fn send(&mut self, topics: &mut TopicManager, letter: &DeadLetter) -> Result<(u32, u64)> {
        let partition = letter.partition % topics.open(self.producer.topic())?.partitions().max(1);
        let offset = self.producer.send_to(topics, partition, &letter.encode())?;
        self.dead_lettered += 1;
        Ok((partition, offset))
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_round_trip_and_bad_bytes_are_refused() {
        let letter = DeadLetter {
            topic: "object-events".into(),
            partition: 3,
            offset: 42,
            attempts: 5,
            error: "bad checksum".into(),
            payload: b"fabric://default/photos/cat.jpg".to_vec(),
        };
        let bytes = letter.encode();
        assert_eq!(DeadLetter::decode(&bytes).unwrap(), letter);
        for cut in [0, 3, 10, 21, 30] {
            assert!(DeadLetter::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            truncate("é".repeat(200), 255).len(),
            254,
            "cut between characters"
        );
        let mut huge = bytes.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(DeadLetter::decode(&huge).is_err());
    }
}

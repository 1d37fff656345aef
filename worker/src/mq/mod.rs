//! Messaging on topics in shared memory, without a broker.
//!
//! ```no_run
//! use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
//! use grafos_worker::mq::offset::MemOffsetStore;
//! use grafos_worker::mq::producer::Producer;
//! use grafos_worker::mq::topic::{TopicConfig, TopicManager};
//! # fn main() -> grafos_worker::Result<()> {
//! let mut topics = TopicManager::new();
//! topics.create("object-events", TopicConfig { num_partitions: 4, partition_capacity: 128, partition_stride: 512 })?;
//! let mut notifier = Producer::new("object-events");
//! notifier.send(&mut topics, b"fabric://default/photos/cat.jpg")?;
//! let mut offsets = MemOffsetStore::new();
//! let mut consumer = Consumer::new("object-events", "processors");
//! consumer.assign(&[0, 1, 2, 3]);
//! consumer.seek(&topics, &offsets, SeekPolicy::Earliest)?;
//! for (partition, message) in consumer.poll(&topics, 100)? {
//!     println!("{partition}@{}: {} bytes", message.offset, message.payload.len());
//! }
//! consumer.commit(&mut offsets)?;
//! # Ok(()) }
//! ```
//!
//! * [`topic`]: topics and their partitions (multi-producer ring logs).
//! * [`producer`]: appends, round-robin or by key.
//! * [`consumer`]: reads a set of partitions for a consumer group.
//! * [`dlq`]: dead letters for records that keep failing.
//! * [`group`]: members of a consumer group sharing the partitions.
//! * [`offset`]: where groups' committed offsets are kept.

pub mod consumer;
pub mod dlq;
pub mod group;
pub mod offset;
pub mod producer;
pub mod topic;

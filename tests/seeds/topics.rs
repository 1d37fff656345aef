//! The topic seed: `TopicManager`, `Producer`, `Consumer` with
//! `SeekPolicy`, `poll` and `commit`, offsets in `MemOffsetStore` and in
//! the durable `FabricKvStore`, and the two overflow policies.

// The alias prelude: the seed's module paths.
use grafos_worker::FabricError;
use grafos_worker::kv::FabricKvStore;
use grafos_worker::mem::{MemBuilder, MemLease};
use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
use grafos_worker::mq::offset::MemOffsetStore;
use grafos_worker::mq::producer::Producer;
use grafos_worker::mq::topic::{Overflow, Topic, TopicConfig, TopicManager, TopicOptions};
use grafos_worker::store::FabricUri;

use std::time::Duration;

use crate::SeedResult;

fn instance() -> String {
    std::env::var("GRAFOS_INSTANCE").expect("the harness sets the instance")
}

/// The seed's snippet; `claimed` stands for what a consumer group hands
/// this member (all four partitions).
pub fn topic_round_trip() -> SeedResult {
    let uri = FabricUri::new(&instance(), "photos", "cat.jpg")?;
    let claimed: Vec<u32> = vec![0, 1, 2, 3];

    let mut topics = TopicManager::new();
    topics.create(
        "object-events",
        TopicConfig {
            num_partitions: 4,
            partition_capacity: 128,
            partition_stride: 512,
        },
    )?;
    let mut notifier = Producer::new("object-events");
    notifier.send(&mut topics, uri.to_string().as_bytes())?;
    let mut offsets = MemOffsetStore::new();
    let mut consumer = Consumer::new("object-events", "processors");
    consumer.assign(&claimed);
    consumer.seek(&topics, &offsets, SeekPolicy::Earliest)?;
    let messages = consumer.poll(&topics, 100)?;
    consumer.commit(&mut offsets);

    assert_eq!(messages.len(), 1, "one notification sent, one polled");
    let (partition, message) = &messages[0];
    assert_eq!(message.payload, uri.to_string().as_bytes());
    assert_eq!(message.offset, 0);
    assert_eq!(
        offsets.get("object-events", "processors", *partition),
        Some(1),
        "the commit saved the position after the message"
    );
    assert!(matches!(
        topics.create(
            "object-events",
            TopicConfig {
                num_partitions: 1,
                partition_capacity: 1,
                partition_stride: 1
            }
        ),
        Err(FabricError::AlreadyExists(_))
    ));
    let described = topics.describe("object-events")?;
    assert_eq!(described.partitions.len(), 4);
    assert_eq!(described.partitions[*partition as usize].head, 1);
    assert_eq!(described.groups[0].name, "processors");
    assert_eq!(described.groups[0].committed[*partition as usize], 1);
    // A copy of the topic's bytes in another lease (a stored object, say)
    // is not taken for a topic by the supervisor or `grafos status`.
    let own = MemLease::open(described.lease_id)?;
    let mut bytes = vec![0u8; 8192];
    own.read_at(0, &mut bytes)?;
    let copy = MemBuilder::new().min_bytes(own.len()).acquire()?;
    copy.write_at(0, &bytes)?;
    assert!(Topic::inspect(own.segment().clone(), &instance())?.is_some());
    assert!(Topic::inspect(copy.segment().clone(), &instance())?.is_none());
    copy.release()?;
    drop(own);
    topics.delete("object-events")?;
    assert!(matches!(
        topics.open("object-events"),
        Err(FabricError::NotFound(_))
    ));
    Ok(())
}

/// Keyed sends keep a key in one partition, in order; a second group
/// reads the same records independently (fan-out), through `poll_with`.
pub fn keyed_sends_stay_in_order_for_every_group() -> SeedResult {
    let mut topics = TopicManager::new();
    topics.create(
        "keyed",
        TopicConfig {
            num_partitions: 3,
            partition_capacity: 64,
            partition_stride: 32,
        },
    )?;
    let mut producer = Producer::new("keyed");
    for i in 0..30u32 {
        let key = format!("k{}", i % 3);
        producer.send_keyed(&mut topics, key.as_bytes(), format!("{key}:{i}").as_bytes())?;
    }
    for group in ["a", "b"] {
        let mut offsets = MemOffsetStore::new();
        let mut consumer = Consumer::new("keyed", group);
        consumer.assign(&[0, 1, 2]);
        consumer.seek(&topics, &offsets, SeekPolicy::Earliest)?;
        let mut seen: std::collections::HashMap<String, Vec<u32>> = Default::default();
        let mut partition_of = std::collections::HashMap::new();
        // Group b takes its records through `poll_with` (one reused buffer).
        let polled: Vec<(u32, Vec<u8>)> = if group == "a" {
            let got = consumer.poll(&topics, 1000)?;
            got.into_iter().map(|(p, m)| (p, m.payload)).collect()
        } else {
            let mut got = Vec::new();
            let n =
                consumer.poll_with(&topics, 1000, |p, _, bytes| got.push((p, bytes.to_vec())))?;
            assert_eq!(n, got.len());
            got
        };
        assert_eq!(polled.len(), 30, "group {group} got every record");
        for (p, payload) in polled {
            let text = String::from_utf8(payload)?;
            let (key, i) = text.split_once(':').expect("key:i");
            assert_eq!(
                *partition_of.entry(key.to_string()).or_insert(p),
                p,
                "a key stays in one partition"
            );
            seen.entry(key.to_string()).or_default().push(i.parse()?);
        }
        for (key, values) in &seen {
            let mut sorted = values.clone();
            sorted.sort_unstable();
            assert_eq!(values, &sorted, "{key} out of order for group {group}");
            assert_eq!(values.len(), 10);
        }
        consumer.commit(&mut offsets);
    }
    topics.delete("keyed")?;
    Ok(())
}

/// Offsets committed to the durable store survive the consumer: a new one
/// seeking `Committed` resumes after them, and `Latest` skips the past.
pub fn durable_offsets_resume_where_committed() -> SeedResult {
    let mut topics = TopicManager::new();
    topics.create(
        "durable",
        TopicConfig {
            num_partitions: 1,
            partition_capacity: 32,
            partition_stride: 16,
        },
    )?;
    let mut producer = Producer::new("durable");
    for i in 0..10u32 {
        producer.send(&mut topics, &i.to_le_bytes())?;
    }
    {
        let mut offsets = FabricKvStore::open("durable-offsets")?;
        let mut consumer = Consumer::new("durable", "g");
        consumer.assign(&[0]);
        consumer.seek(&topics, &offsets, SeekPolicy::Committed)?;
        let first = consumer.poll(&topics, 4)?;
        assert_eq!(first.len(), 4);
        consumer.commit(&mut offsets)?;
        // Polled and never committed: redelivered to the next consumer.
        assert_eq!(consumer.poll(&topics, 2)?.len(), 2);
    }
    let offsets = FabricKvStore::open("durable-offsets")?;
    let mut consumer = Consumer::new("durable", "g");
    consumer.assign(&[0]);
    consumer.seek(&topics, &offsets, SeekPolicy::Committed)?;
    let rest = consumer.poll(&topics, 100)?;
    let got: Vec<u64> = rest.iter().map(|(_, m)| m.offset).collect();
    assert_eq!(
        got,
        (4..10).collect::<Vec<u64>>(),
        "resumed at the committed offset"
    );
    consumer.seek(&topics, &offsets, SeekPolicy::Latest)?;
    assert!(consumer.poll(&topics, 100)?.is_empty());
    producer.send(&mut topics, b"new")?;
    let new = consumer.poll_timeout(&topics, 100, Duration::from_secs(5))?;
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].1.payload, b"new");
    topics.delete("durable")?;
    Ok(())
}

/// Overwrite: a consumer lapped on purpose learns how much it lost, and
/// goes on from the oldest record retained; nothing torn is returned.
pub fn a_lapped_consumer_is_told_what_it_lost() -> SeedResult {
    let mut topics = TopicManager::new();
    topics.create(
        "lapped",
        TopicConfig {
            num_partitions: 1,
            partition_capacity: 8,
            partition_stride: 16,
        },
    )?;
    let mut producer = Producer::new("lapped");
    let mut consumer = Consumer::new("lapped", "slow");
    consumer.assign(&[0]);
    consumer.seek(&topics, &MemOffsetStore::new(), SeekPolicy::Earliest)?;
    for i in 0..20u64 {
        producer.send(&mut topics, &i.to_le_bytes())?;
    }
    match consumer.poll(&topics, 100) {
        Err(FabricError::Lagged {
            lost,
            resume,
            partition: 0,
            ..
        }) => {
            assert_eq!((lost, resume), (12, 12));
        }
        other => panic!("expected Lagged, got {other:?}"),
    }
    let rest = consumer.poll(&topics, 100)?;
    let values: Vec<u64> = rest
        .iter()
        .map(|(_, m)| u64::from_le_bytes(m.payload.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(values, (12..20).collect::<Vec<u64>>());
    assert_eq!(consumer.lost(), 12);
    // A group with nothing committed that seeks `Committed` starts at the
    // oldest record retained: nothing to lag behind.
    let mut fresh = Consumer::new("lapped", "fresh");
    fresh.assign(&[0]);
    fresh.seek(&topics, &MemOffsetStore::new(), SeekPolicy::Committed)?;
    assert_eq!(fresh.position(0), Some(12));
    assert_eq!(fresh.poll(&topics, 100)?.len(), 8);
    assert_eq!(
        topics.describe("lapped")?.partitions[0].stats.overwrites,
        12
    );
    topics.delete("lapped")?;
    Ok(())
}

/// Backpressure: a producer waits for the slowest holding group, and is
/// let through by its commit; a group whose member left stops holding
/// once idle past the retention.
pub fn backpressure_waits_for_commits() -> SeedResult {
    let mut topics = TopicManager::new();
    let options = TopicOptions {
        overflow: Overflow::Backpressure,
        group_retention: Duration::from_millis(300),
        ..TopicOptions::default()
    };
    topics.create_with(
        "held",
        TopicConfig {
            num_partitions: 1,
            partition_capacity: 4,
            partition_stride: 16,
        },
        options,
    )?;
    let mut offsets = MemOffsetStore::new();
    let mut consumer = Consumer::new("held", "g");
    consumer.assign(&[0]);
    consumer.seek(&topics, &offsets, SeekPolicy::Earliest)?;
    let mut producer = Producer::new("held").with_timeout(Some(Duration::from_millis(50)));
    for i in 0..4u8 {
        producer.send(&mut topics, &[i])?;
    }
    let refused = producer.send(&mut topics, &[4]);
    assert!(
        matches!(&refused, Err(FabricError::Topic { source, .. }) if source.to_string() == "timed out"),
        "a full partition under backpressure waits, then times out: {refused:?}"
    );
    assert_eq!(consumer.poll(&topics, 2)?.len(), 2);
    consumer.commit(&mut offsets);
    producer.send(&mut topics, &[4])?;
    producer.send(&mut topics, &[5])?;
    assert!(
        producer.send(&mut topics, &[6]).is_err(),
        "two committed, two appended"
    );
    // Every record the group did not commit is still there, in order.
    let rest: Vec<u8> = consumer
        .poll(&topics, 100)?
        .into_iter()
        .map(|(_, m)| m.payload[0])
        .collect();
    assert_eq!(rest, vec![2, 3, 4, 5]);
    assert_eq!(topics.describe("held")?.partitions[0].stats.overwrites, 0);
    // The member leaves without committing; past the retention the group
    // stops holding and the producer goes on.
    drop(consumer);
    let mut patient = Producer::new("held").with_timeout(Some(Duration::from_secs(5)));
    patient.send(&mut topics, &[6])?;
    assert!(topics.describe("held")?.groups_released >= 1);
    topics.delete("held")?;
    Ok(())
}

//! `grafos topic create|describe|tail|send|ls|delete`: the topics of a running
//! instance from the command line.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use grafos_worker::layout::topic::Read;
use grafos_worker::mq::topic::{
    DEFAULT_GROUP_RETENTION, Overflow, TopicConfig, TopicManager, TopicOptions,
};

use crate::status::{overflow_name, render_topic, topic_status};

/// What `grafos topic` does.
#[derive(Subcommand)]
pub enum TopicAction {
    /// Create topic NAME.
    Create {
        /// 1 to 64 of letters, digits, '.', '_' and '-'.
        name: String,
        /// Partitions.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Records each partition retains.
        #[arg(long, default_value_t = 1024)]
        capacity: u64,
        /// Largest record in bytes.
        #[arg(long, default_value_t = 512)]
        stride: u64,
        /// Producers wait for the slowest consumer group instead of
        /// overwriting the oldest records.
        #[arg(long)]
        backpressure: bool,
        /// Seconds a group with no live member keeps holding producers
        /// back (with --backpressure).
        #[arg(long, default_value_t = DEFAULT_GROUP_RETENTION.as_secs())]
        retention_secs: u64,
        /// The topic lease's TTL in seconds.
        #[arg(long, default_value_t = grafos_worker::mq::topic::DEFAULT_TOPIC_LEASE_SECS)]
        lease_secs: u64,
    },
    /// Shape, per-partition head (next offset) and tail (oldest retained),
    /// counters, and each consumer group's committed offsets and lag.
    Describe {
        /// The topic.
        name: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print records of topic NAME, one per line: `partition offset
    /// payload` (bytes that are not printable are escaped). Reads without
    /// joining a group, so it never holds producers back.
    Tail {
        /// The topic.
        name: String,
        /// Only this partition (all by default).
        #[arg(long)]
        partition: Option<u32>,
        /// Where to start in each partition.
        #[arg(long, value_enum, default_value_t = From::Earliest)]
        from: From,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Keep waiting for new records (until interrupted or --count).
        #[arg(short, long)]
        follow: bool,
    },
    /// Send each MESSAGE to topic NAME (round-robin over its partitions,
    /// or by --key); prints `partition offset` per message.
    Send {
        /// The topic.
        name: String,
        /// Partition by this key instead of round-robin.
        #[arg(long)]
        key: Option<String>,
        /// The records to send.
        #[arg(required = true)]
        messages: Vec<String>,
    },
    /// List the instance's topics.
    Ls,
    /// Delete topic NAME (its memory goes once every holder let go).
    Delete {
        /// The topic.
        name: String,
    },
}

/// Where `tail` starts.
#[derive(Clone, Copy, ValueEnum)]
pub enum From {
    /// The oldest record retained.
    Earliest,
    /// Only records appended from now on.
    Latest,
}

/// Runs a topic command on `instance`.
///
/// # Errors
/// A one-line reason.
pub fn run(instance: &str, action: TopicAction) -> Result<(), String> {
    let mut topics = TopicManager::in_instance(instance);
    let text = |e: grafos_worker::FabricError| e.to_string();
    match action {
        TopicAction::Create {
            name,
            partitions,
            capacity,
            stride,
            backpressure,
            retention_secs,
            lease_secs,
        } => {
            let options = TopicOptions {
                overflow: if backpressure {
                    Overflow::Backpressure
                } else {
                    Overflow::Overwrite
                },
                group_retention: Duration::from_secs(retention_secs),
                lease_secs,
            };
            let config = TopicConfig {
                num_partitions: partitions,
                partition_capacity: capacity,
                partition_stride: stride,
            };
            topics.create_with(&name, config, options).map_err(text)?;
            let d = topics.describe(&name).map_err(text)?;
            println!(
                "created topic {name}: {partitions} partitions of {capacity} records of up to {stride} bytes, {} (lease {})",
                overflow_name(d.overflow),
                d.lease_id
            );
            Ok(())
        }
        TopicAction::Describe { name, json } => {
            let t = topic_status(topics.describe(&name).map_err(text)?);
            if json {
                println!("{}", serde_json::to_string(&t).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render_topic(&t));
            }
            Ok(())
        }
        TopicAction::Tail {
            name,
            partition,
            from,
            count,
            follow,
        } => tail(&topics, &name, partition, from, count, follow),
        TopicAction::Send {
            name,
            key,
            messages,
        } => {
            let mut producer = grafos_worker::mq::producer::Producer::new(&name);
            for m in messages {
                let (p, offset) = match &key {
                    Some(k) => producer.send_keyed(&mut topics, k.as_bytes(), m.as_bytes()),
                    None => producer.send(&mut topics, m.as_bytes()),
                }
                .map_err(text)?;
                println!("{p} {offset}");
            }
            Ok(())
        }
        TopicAction::Ls => {
            for name in topics.list().map_err(text)? {
                println!("{name}");
            }
            Ok(())
        }
        TopicAction::Delete { name } => {
            topics.delete(&name).map_err(text)?;
            println!("deleted topic {name}");
            Ok(())
        }
    }
}

fn tail(
    topics: &TopicManager,
    name: &str,
    partition: Option<u32>,
    from: From,
    count: Option<u64>,
    follow: bool,
) -> Result<(), String> {
    let topic = topics.open(name).map_err(|e| e.to_string())?;
    let partitions: Vec<u32> = match partition {
        Some(p) if p >= topic.partitions() => {
            return Err(format!(
                "topic {name} has {} partitions; there is no partition {p}",
                topic.partitions()
            ));
        }
        Some(p) => vec![p],
        None => (0..topic.partitions()).collect(),
    };
    let mut at: Vec<u64> = partitions
        .iter()
        .map(|&p| match from {
            From::Earliest => topic.tail(p),
            From::Latest => topic.head(p),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        let mut progressed = false;
        for (i, &p) in partitions.iter().enumerate() {
            loop {
                if count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
                match topic.read(p, at[i], &mut buf).map_err(|e| e.to_string())? {
                    Read::Record => {
                        let line = format!("{p} {} {}\n", at[i], buf.escape_ascii());
                        if out.write_all(line.as_bytes()).is_err() {
                            return Ok(()); // the reader went away
                        }
                        printed += 1;
                        at[i] += 1;
                        progressed = true;
                    }
                    Read::Hole => at[i] += 1,
                    Read::Lagged { lost, resume } => {
                        eprintln!(
                            "partition {p}: {lost} records overwritten before they were read"
                        );
                        at[i] = resume;
                    }
                    Read::Pending(_) => break,
                }
            }
        }
        if !follow {
            return Ok(());
        }
        if !progressed {
            let _ = out.flush();
            let until = Instant::now() + Duration::from_millis(50);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
                if partitions
                    .iter()
                    .enumerate()
                    .any(|(i, &p)| topic.head(p).is_ok_and(|h| h > at[i]))
                {
                    break;
                }
            }
        }
    }
}

//! Recipe 31: an event pipeline without network hops.
//!
//! A producer stores objects in the instance's object store and notifies
//! the `object-events` topic with each object's `FabricUri`; a consumer
//! group of worker processes reads the notifications, reads each object,
//! checksums it and writes `fabric://<instance>/results/<key>` with the
//! checksum and the worker incarnation that produced it. Members share
//! the topic's partitions; a killed member's partitions go to the others
//! at once, and they re-read from the last commit (at-least-once; a result
//! written again says so in its `runs` count).
//!
//! Without a subcommand this is the demo: it starts a private instance,
//! runs the producer and the workers under `grafos run` supervision,
//! prints progress, checks every result, reports events/s and end-to-end
//! latency, and takes the instance down. `producer` and `worker` are the
//! roles the topology runs.

mod common;
mod demo;
mod producer;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run recipe 31: objects stored, notified on a topic, processed by a
/// consumer group of worker processes, results written back.
#[derive(Parser)]
#[command(about, long_about)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Objects the producer stores.
    #[arg(long, default_value_t = 100_000)]
    objects: u64,
    /// Bytes per object.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    size: u64,
    /// Objects per second at most (0: as fast as the pipeline takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Worker processes in the consumer group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    workers: u32,
    /// Partitions of the notification topic.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=64))]
    partitions: u32,
}

/// The processes of the pipeline (run by the topology).
#[derive(Subcommand)]
enum Role {
    /// Store objects and notify them, resuming from the checkpoint.
    Producer {
        /// Objects to store.
        #[arg(long)]
        objects: u64,
        /// Bytes per object.
        #[arg(long)]
        size: usize,
        /// Objects per second at most (0: unpaced).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Partitions of the topic.
        #[arg(long)]
        partitions: u32,
    },
    /// Handle notifications as a member of the group.
    Worker {
        /// Partitions of the topic.
        #[arg(long)]
        partitions: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.role {
        Some(Role::Producer {
            objects,
            size,
            rate,
            partitions,
        }) => producer::run(&producer::ProducerArgs {
            objects,
            size,
            rate,
            partitions,
        })
        .map(|()| true),
        Some(Role::Worker { partitions }) => worker::run(partitions).map(|()| true),
        None => demo::run(&demo::DemoArgs {
            objects: cli.objects,
            size: cli.size as usize,
            rate: cli.rate,
            workers: cli.workers,
            partitions: cli.partitions,
        }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("recipe31: {e}");
            ExitCode::FAILURE
        }
    }
}

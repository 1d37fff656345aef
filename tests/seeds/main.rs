//! The seeds' snippets as compiled tests, run against a real supervisor
//! (started in this process on an instance of its own) and, where the
//! snippet's other end belongs elsewhere, a second process.
//!
//! The snippets are as the seeds give them, changed only by the `use`
//! lines of the alias prelude below, `?` where a constructor touches
//! shared memory, and the instance name (set through `GRAFOS_INSTANCE`
//! before anything runs).
//!
//! Our own harness (`harness = false`): one instance for all snippets, and
//! the same binary serves as the second process.

#[path = "../common/harness.rs"]
mod harness;

mod recipe31;
mod recipe8;
mod stream;
mod topics;

use std::time::Duration;

use grafos_runtime::supervisor::Config;

/// A snippet's result.
pub type SeedResult = Result<(), Box<dyn std::error::Error>>;

/// A snippet to run.
type Seed = fn() -> SeedResult;

/// Every snippet, by name.
const ALL: &[(&str, Seed)] = &[
    ("recipe8_edge_round_trip", recipe8::edge_round_trip),
    (
        "recipe8_relocate_makes_cached_stale",
        recipe8::relocate_makes_cached_stale,
    ),
    (
        "recipe8_other_process_follows",
        recipe8::other_process_follows,
    ),
    (
        "recipe8_expired_lease_relocates",
        recipe8::expired_lease_relocates,
    ),
    (
        "recipe8_uncarried_records_are_counted",
        recipe8::uncarried_records_are_counted,
    ),
    (
        "stream_pipeline_runs_as_threads",
        stream::pipeline_runs_as_threads,
    ),
    (
        "stream_a_failing_stage_ends_the_run",
        stream::a_failing_stage_ends_the_run,
    ),
    ("topic_round_trip", topics::topic_round_trip),
    (
        "topic_keyed_sends_stay_in_order_for_every_group",
        topics::keyed_sends_stay_in_order_for_every_group,
    ),
    (
        "topic_durable_offsets_resume_where_committed",
        topics::durable_offsets_resume_where_committed,
    ),
    (
        "topic_a_lapped_consumer_is_told_what_it_lost",
        topics::a_lapped_consumer_is_told_what_it_lost,
    ),
    (
        "topic_backpressure_waits_for_commits",
        topics::backpressure_waits_for_commits,
    ),
    (
        "recipe31_object_events_round_trip",
        recipe31::object_events_round_trip,
    ),
    (
        "recipe31_a_moved_partition_fences_the_old_member",
        recipe31::a_moved_partition_fences_the_old_member,
    ),
    (
        "recipe31_a_silent_member_times_out",
        recipe31::a_silent_member_times_out,
    ),
    (
        "recipe31_a_dead_member_loses_partitions_at_once",
        recipe31::a_dead_member_loses_partitions_at_once,
    ),
    (
        "recipe31_the_supervisor_evicts_a_dead_member",
        recipe31::the_supervisor_evicts_a_dead_member,
    ),
    (
        "recipe31_failing_records_go_to_the_dead_letter_topic",
        recipe31::failing_records_go_to_the_dead_letter_topic,
    ),
    (
        "recipe31_jobs_retry_and_store_outputs_once",
        recipe31::jobs_retry_and_store_outputs_once,
    ),
    (
        "recipe31_one_put_fans_out_to_several_groups",
        recipe31::one_put_fans_out_to_several_groups,
    ),
    (
        "recipe31_stages_chain_through_a_second_topic",
        recipe31::stages_chain_through_a_second_topic,
    ),
];

fn main() {
    if let Ok(role) = std::env::var(recipe8::PEER_ENV) {
        return recipe8::peer(&role);
    }
    if let Ok(name) = std::env::var(recipe31::MEMBER_ENV) {
        return recipe31::member(&name);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let instance = harness::Instance::start("seeds", |data_dir| Config {
        pool_size: 256 << 20,
        block_pool_size: 64 << 20,
        data_dir,
        grace: Duration::from_secs(2),
        claim_age_limit: Duration::from_secs(10),
    });
    let tests = ALL
        .iter()
        .map(|&(name, seed)| {
            let run: Box<dyn Fn() -> harness::Outcome> =
                Box::new(move || seed().map_err(|e| e.to_string()));
            (name, run)
        })
        .collect();
    instance.run(tests);
}

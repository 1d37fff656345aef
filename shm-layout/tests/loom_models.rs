//! Loom models of the edge log, the FabricQueue and the wait protocol, as
//! written.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p grafos-shm-layout --release --test loom_models`
#![cfg(loom)]

mod models;

#[test]
fn edge_wraparound() {
    models::check(models::edge_wraparound);
}

#[test]
fn edge_commit_reopen() {
    models::check(models::edge_commit_reopen);
}

#[test]
fn edge_seal_race() {
    models::check(models::edge_seal_race);
}

#[test]
fn edge_blocking_read() {
    models::check(models::edge_blocking_read);
}

#[test]
fn wait_no_lost_wakeup() {
    models::check(models::wait_no_lost_wakeup);
}

#[test]
fn wait_any_no_lost_wakeup() {
    models::check(models::wait_any_no_lost_wakeup);
}

#[test]
fn queue_two_producers_one_consumer() {
    models::check(models::queue::two_producers_one_consumer);
}

#[test]
fn queue_one_producer_two_consumers() {
    models::check(models::queue::one_producer_two_consumers);
}

#[test]
fn queue_wraparound() {
    models::check(models::queue::wraparound);
}

#[test]
fn queue_full_and_empty() {
    models::check(models::queue::full_and_empty);
}

#[test]
fn queue_help_past_a_stopped_claimer() {
    models::check(models::queue::help_past_a_stopped_claimer);
}

#[test]
fn queue_repair_races_a_late_publish() {
    models::check(models::queue::repair_races_a_late_publish);
}

#[test]
fn queue_seal_against_a_stale_tail() {
    models::check(models::queue::seal_against_a_stale_tail);
}

#[test]
fn queue_blocking_no_lost_wakeup() {
    models::check(models::queue::blocking_no_lost_wakeup);
}

#[test]
fn queue_help_past_a_repaired_claim() {
    models::check(models::queue::help_past_a_repaired_claim);
}

#[test]
fn queue_seal_while_draining() {
    models::check_with_preemptions(3, models::queue::seal_while_draining);
}

#[test]
fn queue_repair_dead_spares_the_living() {
    models::check(models::queue::repair_dead_spares_the_living);
}

#[test]
fn handoff_two_publishers() {
    models::check(models::handoff::handoff_two_publishers);
}

#[test]
fn handoff_reader_during_two_publications() {
    models::check(models::handoff::handoff_reader_during_two_publications);
}

#[test]
fn handoff_dead_publisher_reverted() {
    models::check(models::handoff::handoff_dead_publisher_reverted);
}

#[test]
fn relocation_rebinds_both_ends() {
    models::check_spinning(models::rebind::relocation_rebinds_both_ends);
}

#[test]
fn map_insert_races_get() {
    models::check(models::map::insert_races_get);
}

#[test]
fn map_overwrite_races_get() {
    models::check(models::map::overwrite_races_get);
}

#[test]
fn map_delete_races_get() {
    models::check(models::map::delete_races_get);
}

#[test]
fn map_pinned_reader_never_sees_reuse() {
    models::check(models::map::pinned_reader_never_sees_reuse);
}

#[test]
fn topic_two_producers_one_slot() {
    models::check(models::topic::two_producers_one_slot);
}

#[test]
fn topic_reader_races_a_lapping_writer() {
    models::check(models::topic::reader_races_a_lapping_writer);
}

#[test]
fn topic_backpressure_never_overwrites() {
    models::check(models::topic::backpressure_never_overwrites);
}

#[test]
fn topic_one_look_reader() {
    models::check(models::topic::one_look_reader);
}

#[test]
fn topic_repair_races_a_publish() {
    models::check(models::topic::repair_races_a_publish);
}

#[test]
fn topic_hold_races_an_append() {
    models::check(models::topic::hold_races_an_append);
}

#[test]
fn group_assignment_races_a_rebalance() {
    models::check(models::topic::assignment_races_a_rebalance);
}

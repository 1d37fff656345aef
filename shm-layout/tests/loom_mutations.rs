//! Mutation checks: each loom model, run with the mutation aimed at the
//! step it covers, must fail, and fail for the expected reason.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p grafos-shm-layout --release --test loom_mutations`
#![cfg(loom)]

mod models;

use std::sync::Mutex;

use grafos_shm_layout::mutant::{self, Mutant};

/// The selected mutation is process-global; one check at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn must_fail(mutant: Mutant, model: fn(), expected: &str) {
    must_fail_within(2, mutant, model, expected);
}

/// As `must_fail`, exploring at least `preemptions` preemptions.
fn must_fail_within(preemptions: usize, mutant: Mutant, model: fn(), expected: &str) {
    must_fail_checked(
        |model| models::check_with_preemptions(preemptions, model),
        mutant,
        model,
        expected,
    );
}

/// As `must_fail`, for a model checked with `models::check_spinning`.
fn must_fail_spinning(mutant: Mutant, model: fn(), expected: &str) {
    must_fail_checked(
        |model| models::check_spinning(model),
        mutant,
        model,
        expected,
    );
}

fn must_fail_checked(check: impl Fn(fn()), mutant: Mutant, model: fn(), expected: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    mutant::set(mutant);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(model)));
    mutant::set(Mutant::None);
    let payload = outcome.expect_err(&format!(
        "model passed with {mutant:?}: the mutation went unnoticed"
    ));
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains(expected),
        "{mutant:?} failed for another reason: {message}"
    );
}

#[test]
fn relaxed_publish_tears_records() {
    must_fail(
        Mutant::EdgePublishRelaxed,
        models::edge_wraparound,
        "Causality violation",
    );
}

#[test]
fn relaxed_header_load_tears_records() {
    must_fail(
        Mutant::EdgeHeaderLoadRelaxed,
        models::edge_wraparound,
        "Causality violation",
    );
}

#[test]
fn relaxed_commit_lets_the_producer_overwrite_unread_bytes() {
    must_fail(
        Mutant::EdgeCommitRelaxed,
        models::edge_wraparound,
        "Causality violation",
    );
}

#[test]
fn unzeroed_next_header_reads_a_stale_record() {
    must_fail(
        Mutant::EdgeSkipZeroNext,
        models::edge_wraparound,
        "phantom record",
    );
}

#[test]
fn plain_store_claim_breaks_the_seal() {
    must_fail(
        Mutant::EdgeClaimPlainStore,
        models::edge_seal_race,
        "seal violated",
    );
}

#[test]
fn sleeper_without_fence_loses_wakeups() {
    must_fail(
        Mutant::WaitSkipSleeperFence,
        models::wait_no_lost_wakeup,
        "deadlock",
    );
}

#[test]
fn waker_without_fence_loses_wakeups() {
    must_fail(
        Mutant::WaitSkipWakerFence,
        models::wait_no_lost_wakeup,
        "deadlock",
    );
}

#[test]
fn edge_waker_without_fence_loses_wakeups() {
    must_fail(
        Mutant::WaitSkipWakerFence,
        models::edge_blocking_read,
        "deadlock",
    );
}

#[test]
fn wait_any_sleeper_without_fence_loses_wakeups() {
    must_fail(
        Mutant::WaitSkipSleeperFence,
        models::wait_any_no_lost_wakeup,
        "deadlock",
    );
}

#[test]
fn queue_relaxed_publish_tears_records() {
    must_fail(
        Mutant::QueuePublishRelaxed,
        models::queue::two_producers_one_consumer,
        "records lost or torn",
    );
}

#[test]
fn queue_relaxed_take_tears_records() {
    must_fail(
        Mutant::QueueTakeRelaxed,
        models::queue::two_producers_one_consumer,
        "records lost or torn",
    );
}

#[test]
fn queue_plain_store_take_takes_a_record_twice() {
    must_fail(
        Mutant::QueueTakePlainStore,
        models::queue::one_producer_two_consumers,
        "record taken twice",
    );
}

#[test]
fn queue_relaxed_free_lets_the_producer_overwrite_a_read() {
    must_fail(
        Mutant::QueueFreeRelaxed,
        models::queue::wraparound,
        "Causality violation",
    );
}

#[test]
fn queue_same_lap_free_looks_full_forever() {
    must_fail(
        Mutant::QueueFreeSameLap,
        models::queue::full_and_empty,
        "deadlock",
    );
}

#[test]
fn queue_without_help_wedges_behind_a_stopped_claimer() {
    must_fail(
        Mutant::QueueSkipTailHelp,
        models::queue::help_past_a_stopped_claimer,
        "wedged behind a stopped claimer",
    );
}

#[test]
fn queue_plain_store_repair_loses_a_late_publish() {
    must_fail(
        Mutant::QueueRepairPlainStore,
        models::queue::repair_races_a_late_publish,
        "acknowledged record lost",
    );
}

#[test]
fn queue_without_backout_a_stale_producer_publishes_past_the_seal() {
    must_fail(
        Mutant::QueueSkipSealBackout,
        models::queue::seal_against_a_stale_tail,
        "lost by the seal",
    );
}

#[test]
fn queue_waker_without_fence_loses_wakeups() {
    must_fail(
        Mutant::WaitSkipWakerFence,
        models::queue::blocking_no_lost_wakeup,
        "deadlock",
    );
}

#[test]
fn queue_producer_waker_without_fence_loses_wakeups() {
    must_fail(
        Mutant::WaitSkipWakerFence,
        models::queue::full_and_empty,
        "deadlock",
    );
}

#[test]
fn queue_without_lap_ahead_help_wedges_behind_a_repaired_claim() {
    must_fail(
        Mutant::QueueSkipLapAheadHelp,
        models::queue::help_past_a_repaired_claim,
        "wedged behind a repaired claim",
    );
}

#[test]
fn queue_seal_that_passes_a_claim_at_the_end_misses_its_record() {
    must_fail_within(
        3,
        Mutant::QueueSealSkipEndTomb,
        models::queue::seal_while_draining,
        "missed by the drain",
    );
}

#[test]
fn queue_repairing_the_living_fails_their_publish() {
    must_fail(
        Mutant::QueueRepairTheLiving,
        models::queue::repair_dead_spares_the_living,
        "a live participant's claim was repaired",
    );
}

#[test]
fn handoff_plain_store_claim_lets_two_publishers_win() {
    must_fail(
        Mutant::HandoffClaimPlainStore,
        models::handoff::handoff_two_publishers,
        // Both claim, both write the next slot: the winner's locator is
        // torn by the loser's (found before a double win is).
        "torn locator",
    );
}

#[test]
fn handoff_reader_without_recheck_returns_torn_locators() {
    must_fail(
        Mutant::HandoffSkipRecheck,
        models::handoff::handoff_reader_during_two_publications,
        "torn locator",
    );
}

#[test]
fn handoff_writing_the_live_slot_tears_it() {
    must_fail(
        Mutant::HandoffWriteLiveSlot,
        models::handoff::handoff_dead_publisher_reverted,
        "torn locator",
    );
}

#[test]
fn carry_without_tail_lets_the_producer_overwrite_carried_records() {
    must_fail_spinning(
        Mutant::CarrySkipTail,
        models::rebind::relocation_rebinds_both_ends,
        // The rebound producer starts at the carried record and finds its
        // header taken.
        "header changed under the producer",
    );
}

#[test]
fn relaxed_handoff_publish_lets_a_rebinder_see_what_was_not_published() {
    must_fail_spinning(
        Mutant::HandoffPublishRelaxed,
        models::rebind::relocation_rebinds_both_ends,
        // It sees the new generation but not what was published with it
        // (the locator; the carried records, loom finds next).
        "a rebinder reads the published locator",
    );
}

#[test]
fn map_relaxed_link_shows_a_half_written_entry() {
    must_fail(
        Mutant::MapLinkRelaxed,
        models::map::insert_races_get,
        // The reader follows the link before the block's header is
        // visible to it.
        "unknown block tag",
    );
}

#[test]
fn map_unlink_before_link_shows_neither_value() {
    must_fail(
        Mutant::MapOverwriteUnlinkFirst,
        models::map::overwrite_races_get,
        "overwrite seen as None",
    );
}

#[test]
fn map_unlink_dropping_the_tail_hides_the_chain() {
    must_fail(
        Mutant::MapUnlinkDropsTail,
        models::map::delete_races_get,
        "a delete hid the rest of the chain",
    );
}

#[test]
fn map_reclaim_ignoring_pins_reuses_memory_under_a_reader() {
    must_fail(
        Mutant::MapReclaimIgnoresPins,
        models::map::pinned_reader_never_sees_reuse,
        "Causality violation",
    );
}

#[test]
fn map_pin_without_fence_lets_memory_be_reused_under_a_reader() {
    must_fail(
        Mutant::MapPinSkipFence,
        models::map::pinned_reader_never_sees_reuse,
        "Causality violation",
    );
}

#[test]
fn map_writer_without_fences_frees_under_a_pinned_reader() {
    must_fail(
        Mutant::MapWriterSkipFences,
        models::map::pinned_reader_never_sees_reuse,
        "Causality violation",
    );
}

#[test]
fn topic_claim_over_a_writer_loses_a_record() {
    must_fail(
        Mutant::TopicClaimOverWriter,
        models::topic::two_producers_one_slot,
        "torn or lost",
    );
}

#[test]
fn topic_reader_without_recheck_returns_torn_records() {
    must_fail(
        Mutant::TopicSkipReaderRecheck,
        models::topic::reader_races_a_lapping_writer,
        "torn or lost",
    );
}

#[test]
fn topic_writer_without_fence_lets_a_reader_miss_the_overwrite() {
    must_fail(
        Mutant::TopicSkipWriterFence,
        models::topic::reader_races_a_lapping_writer,
        "torn or lost",
    );
}

#[test]
fn topic_ignoring_backpressure_overwrites_unread_records() {
    must_fail(
        Mutant::TopicIgnoreBackpressure,
        models::topic::backpressure_never_overwrites,
        "lagged under backpressure",
    );
}

#[test]
fn topic_reader_without_fence_misses_the_overwrite() {
    must_fail(
        Mutant::TopicSkipReaderFence,
        models::topic::reader_races_a_lapping_writer,
        "torn or lost",
    );
}

#[test]
fn topic_relaxed_first_load_reads_an_unwritten_record() {
    must_fail(
        Mutant::TopicReadRelaxed,
        models::topic::one_look_reader,
        "torn or lost",
    );
}

#[test]
fn topic_relaxed_publish_shows_an_unwritten_record() {
    must_fail(
        Mutant::TopicPublishRelaxed,
        models::topic::one_look_reader,
        "torn or lost",
    );
}

#[test]
fn topic_repair_by_plain_store_loses_an_acknowledged_record() {
    must_fail(
        Mutant::TopicRepairPlainStore,
        models::topic::repair_races_a_publish,
        "torn or lost",
    );
}

#[test]
fn topic_hold_without_fences_lets_a_producer_overwrite_the_cursor() {
    must_fail(
        Mutant::TopicHoldSkipFence,
        models::topic::hold_races_an_append,
        "lagged under backpressure",
    );
}

#[test]
fn topic_hold_with_the_oldest_cursor_lets_a_producer_overwrite_it() {
    must_fail(
        Mutant::TopicHoldOldestCursor,
        models::topic::hold_races_an_append,
        "lagged under backpressure",
    );
}

#[test]
fn group_assignment_without_seq_recheck_mixes_rebalances() {
    must_fail(
        Mutant::GroupSkipSeqRecheck,
        models::topic::assignment_races_a_rebalance,
        "a mix of two rebalances",
    );
}

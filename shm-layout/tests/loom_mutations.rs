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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    mutant::set(mutant);
    let outcome = std::panic::catch_unwind(|| models::check(model));
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

//! Loom models of the edge log and the wait protocol, as written.
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

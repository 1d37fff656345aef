#!/usr/bin/env bash
# Runs the loom models of the lock-free algorithms, then their mutation
# checks (each model, run with a weakened ordering or a skipped step aimed
# at what it covers, must fail for the expected reason).
#
# Budget: --release, LOOM_MAX_PREEMPTIONS=2 (override in the environment;
# the edge seal race with a committing consumer takes minutes at 3),
# tiny capacities, at most 3 threads per model. One queue model
# (`seal_while_draining`) always runs with 3: its race needs them (about
# two minutes with its mutation check).
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
# A target dir of its own: loom's cfg rebuilds every dependency.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"

echo "loom models (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
cargo test -p grafos-shm-layout --release --test loom_models
echo "loom mutation checks"
cargo test -p grafos-shm-layout --release --test loom_mutations

#!/usr/bin/env bash
# Recipe 31 under fire: 100,000 objects of 1 KiB stored and notified by a
# producer paced to last about 32 s, handled by a group of three worker
# processes under `grafos run`; while they flow, 24 SIGKILLs hit random
# members at random moments and 2 hit the producer (it resumes from its
# checkpoint). Each member kill's failover is timed (kill -> partitions
# owned by live members and consuming). Then every result is checked
# from outside the workers with `grafos store ls`; counts come from
# `grafos status --json`. Last line:
#   objects=N results=N missing=0 wrong=0 kills=K rebalances=R reprocessed=P max_failover_ms=T
# Exits non-zero if a result is missing or wrong, fewer than 24 members or
# 2 producers were killed, or P = 0. Extra arguments go to the drill (see
# `target/release/recipe31_failover --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p grafos-runtime -p grafos-examples
exec target/release/recipe31_failover "$@"

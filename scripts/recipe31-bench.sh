#!/usr/bin/env bash
# Recipe 31 against Redis: the grafos pipeline (the recipe31 example: a
# producer and three worker processes under `grafos run`) and the same
# pipeline over a private Redis server (HSET/HGET objects, a stream with
# XADD/XREADGROUP/XACK), naive and batched, side by side in one table of
# events/s and put-to-result latency, with ratios. Medians of --runs runs
# (default 5). Not part of .ci/run.
#
#   bash scripts/recipe31-bench.sh [--runs N] [--recipe31-objects N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p grafos-examples
(cd bench && cargo build --release --quiet)
exec bash scripts/with-redis.sh bash -c \
    'cd bench && target/release/fabric-bench --recipe31-only --redis "$REDIS_ADDR" "$@"' _ "$@"

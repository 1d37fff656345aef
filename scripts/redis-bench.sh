#!/usr/bin/env bash
# The object store against Redis: runs `fabric-bench --store-only` (table
# of put/get ops/s from one and two processes, with ratios) beside a
# private Redis server (scripts/with-redis.sh starts and stops it). Not
# part of .ci/run.
#
#   bash scripts/redis-bench.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
(cd bench && cargo build --release --quiet)
exec bash scripts/with-redis.sh bash -c \
    'bench/target/release/fabric-bench --store-only --redis "$REDIS_ADDR" "$@"' _ "$@"

#!/usr/bin/env bash
# Recipe 8 under fire: 100,000 events through ingest -> parse -> enrich ->
# store, four worker processes under `grafos run`, paced to last about
# 32 s; while they flow, every stage is SIGKILLed in turn (24 kills), four
# live edge segments are poisoned and one expired. Then the sink is
# checked from outside the pipeline: every event id exactly once. Counts
# of kills, relocations and redeliveries come from `grafos status --json`.
# Last line:
#   events=100000 stored=100000 missing=0 duplicates=0 suppressed=S kills=N relocations=M
# Exits non-zero if anything is missing or doubled, kills < 20,
# relocations < 3, or S = 0. Extra arguments go to the drill (see
# `target/release/recipe8_failover --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p grafos-runtime -p grafos-examples
exec target/release/recipe8_failover "$@"

#!/usr/bin/env bash
# The grafos commands as a new user types them, against a worker holding a
# lease: `grafos up --detach`, `grafos status --json`, `grafos lease
# poison ID`, `grafos store put|get|ls|rm` (and a malformed URI refused),
# `grafos topic create|send|tail|describe|ls|delete`,
# `grafos down`, then `grafos run` on the example topology with
# a `grafos kill`; nothing of the instance may be left in /dev/shm or on
# disk. Fails when any step or count is not what it should
# be. Reports how long each wait took.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p grafos-runtime -p grafos-examples
bin=$PWD/target/debug
export GRAFOS_INSTANCE="drill$$"
GRAFOS_RUNTIME_DIR=$(mktemp -d)
export GRAFOS_RUNTIME_DIR
out=$(mktemp)
files=$(mktemp -d)
drill=""

cleanup() {
    [[ -n "$drill" ]] && kill -KILL "$drill" 2>/dev/null || true
    "$bin/grafos" down >/dev/null 2>&1 || true
    rm -rf "$GRAFOS_RUNTIME_DIR" "$out" "$files"
}
trap cleanup EXIT

fail() {
    echo "cli-drill: $*" >&2
    echo "--- lease_drill output:" >&2
    cat "$out" >&2
    exit 1
}

# await DESCRIPTION COMMAND...: polls COMMAND until it succeeds, for 20 s.
await() {
    local what=$1 start=$SECONDS
    shift
    until "$@"; do
        ((SECONDS - start < 20)) || fail "timed out waiting for $what"
        sleep 0.02
    done
    echo "  $what: $((SECONDS - start)) s"
}

status_has() { grep -Eq "$1" <<<"$("$bin/grafos" status --json 2>/dev/null)"; }

echo "grafos up --detach"
"$bin/grafos" up --detach

"$bin/lease_drill" --lease-secs 2 >"$out" &
drill=$!
await "the worker's lease" grep -q '^lease [0-9]* acquired' "$out"
id=$(sed -n 's/^lease \([0-9]*\) acquired.*/\1/p' "$out")

echo "grafos status --json"
status_has "\"id\": $id," || fail "lease $id not in status"
await "a renewal" status_has '"leases_renewed": [1-9]'
status_has '"state": "active"' || fail "lease $id not active"

echo "grafos lease poison $id"
"$bin/grafos" lease poison "$id"
await "the worker to notice" grep -q "lease $id ended .*poisoned" "$out"
wait "$drill" || fail "lease_drill failed"
drill=""
status_has '"leases_poisoned": 1' || fail "poison not counted"

echo "grafos store put / get / ls / rm"
uri="fabric://$GRAFOS_INSTANCE/drill"
head -c 3000 /dev/urandom >"$files/small"
head -c 200000 /dev/urandom >"$files/large" # over the large-object threshold
"$bin/grafos" store put "$uri/a/small" "$files/small"
"$bin/grafos" store put "$uri/large" - <"$files/large"
"$bin/grafos" store get "$uri/a/small" -o "$files/small.out"
cmp -s "$files/small" "$files/small.out" || fail "small object changed"
"$bin/grafos" store get "$uri/large" >"$files/large.out"
cmp -s "$files/large" "$files/large.out" || fail "large object changed"
listed=$("$bin/grafos" store ls "$uri/")
[[ $(wc -l <<<"$listed") -eq 2 ]] || fail "store ls listed: $listed"
grep -q "^$uri/large	200000$" <<<"$listed" || fail "store ls: no large object in: $listed"
printf 'line one\n\tx\\y' | "$bin/grafos" store put "$uri/text" -
printf '123456789' | "$bin/grafos" store put "$uri/a/check" -
# cbf43926: CRC-32's check value (the CRC of "123456789").
grep -q "^$uri/a/check	9	crc32:cbf43926$" <<<"$("$bin/grafos" store ls "$uri/a/" --checksum)" ||
    fail "store ls --checksum: $("$bin/grafos" store ls "$uri/a/" --checksum)"
[[ $("$bin/grafos" store ls "$uri/text" --content) == "$uri/text	13	line one\\n\\tx\\\\y" ]] ||
    fail "store ls --content: $("$bin/grafos" store ls "$uri/text" --content)"
"$bin/grafos" store rm "$uri/a/check"
"$bin/grafos" store rm "$uri/text"
"$bin/grafos" store rm "$uri/large"
if "$bin/grafos" store get "$uri/large" >/dev/null 2>&1; then
    fail "a removed object is still there"
fi
if "$bin/grafos" store get "fabric://$GRAFOS_INSTANCE/drill/a b" 2>"$files/err"; then
    fail "a malformed URI was accepted"
fi
grep -q "bad URI: .*key" "$files/err" || fail "malformed URI reason: $(cat "$files/err")"

echo "grafos topic create / send / tail / describe / delete"
"$bin/grafos" topic create drill-events --partitions 2 --capacity 4 --stride 64
"$bin/grafos" topic send drill-events one two three four five six >/dev/null
"$bin/grafos" topic send drill-events --key k seven >/dev/null
tailed=$("$bin/grafos" topic tail drill-events)
[[ $(wc -l <<<"$tailed") -eq 7 ]] || fail "topic tail printed: $tailed"
grep -Eq "^[01] 0 one$" <<<"$tailed" || fail "topic tail: no first record in: $tailed"
[[ $("$bin/grafos" topic tail drill-events --count 2 | wc -l) -eq 2 ]] || fail "topic tail --count"
"$bin/grafos" topic describe drill-events | grep -q "drill-events" || fail "topic describe"
"$bin/grafos" topic describe drill-events --json | grep -q '"head"' || fail "topic describe --json"
status_has '"topics"' || fail "no topics in status"
if "$bin/grafos" topic create drill-events 2>"$files/err"; then
    fail "a topic was created twice"
fi
grep -q "already exists" "$files/err" || fail "duplicate topic reason: $(cat "$files/err")"
if "$bin/grafos" topic create "bad name" 2>"$files/err"; then
    fail "a bad topic name was accepted"
fi
"$bin/grafos" topic ls | grep -q "^drill-events$" || fail "topic ls"
"$bin/grafos" topic delete drill-events
if "$bin/grafos" topic tail drill-events 2>/dev/null; then
    fail "a deleted topic can still be read"
fi

echo "grafos down"
"$bin/grafos" down
[[ ! -e "$GRAFOS_RUNTIME_DIR/$GRAFOS_INSTANCE" ]] || fail "runtime dir left"

# `grafos run` on the example topology: it starts the instance, the two
# workers hold leases and exit 0 after 4 s; one is killed on the way and
# restarted; the run ends well and takes the instance down.
echo "grafos run examples/topology.toml"
"$bin/grafos" run examples/topology.toml >"$out" 2>&1 &
drill=$!
workers_running() {
    [[ $(grep -cE '^drill\.[01] +running' <<<"$("$bin/grafos" status 2>/dev/null)") -eq 2 ]]
}
await "both workers running" workers_running
echo "grafos kill drill.0"
"$bin/grafos" kill drill.0
await "drill.0 restarted" status_has '"restarts": 1'
wait "$drill" || fail "grafos run failed"
drill=""
grep -q "group stopped: every worker finished" "$out" || fail "the group did not finish"
grep -q "drill.0 .*restarts 1" "$out" || fail "no restart shown"

[[ ! -e "$GRAFOS_RUNTIME_DIR/$GRAFOS_INSTANCE" ]] || fail "runtime dir left"
if compgen -G "/dev/shm/grafos.$GRAFOS_INSTANCE.*" >/dev/null; then
    fail "segments left: $(ls /dev/shm | grep "grafos.$GRAFOS_INSTANCE.")"
fi
echo "cli-drill: ok"

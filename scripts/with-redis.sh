#!/usr/bin/env bash
# Runs a command beside a private Redis server: installs Debian's
# redis-server if it is missing (apt-get; needs root), starts one on
# loopback with persistence off, runs the command with REDIS_ADDR set to
# its HOST:PORT, and stops the server it started (by its pid).
#
#   bash scripts/with-redis.sh COMMAND [ARGS...]
set -euo pipefail

if ! command -v redis-server >/dev/null; then
    echo "redis-server not found: installing Debian's redis-server"
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to install redis-server (apt-get); install it and rerun" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

dir=$(mktemp -d)
pid=""
stop() {
    # Only the server this script started, by its pid.
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap stop EXIT

# A free port: the server we start must be the one that answers there
# (its INFO reports our child's pid), else another port is tried.
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        continue # someone else's server
    fi
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" &
    pid=$!
    for _ in $(seq 100); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$pid"; then
        break
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
done
if [ -z "$pid" ]; then
    echo "could not start a private redis-server" >&2
    exit 1
fi
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on 127.0.0.1:$port (pid $pid)"
REDIS_ADDR="127.0.0.1:$port" "$@"

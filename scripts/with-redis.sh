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
port=$((20000 + RANDOM % 20000))
pidfile="$dir/redis.pid"
pid=""
stop() {
    # Only the server this script started, by its pid.
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -e "/proc/$pid" ] || break
            sleep 0.1
        done
    fi
    rm -rf "$dir"
}
trap stop EXIT

redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --daemonize yes --pidfile "$pidfile" --dir "$dir" --logfile "$dir/redis.log"
for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
pid=$(cat "$pidfile")
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on 127.0.0.1:$port (pid $pid)"
REDIS_ADDR="127.0.0.1:$port" "$@"

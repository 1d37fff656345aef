#!/usr/bin/env bash
# Checks that nothing grafos created is left in /dev/shm.
#
#   scripts/leak-check.sh snapshot FILE   remember the grafos.* entries present now
#   scripts/leak-check.sh verify FILE     fail if any grafos.* entry not in FILE exists
set -euo pipefail

list() { find /dev/shm -maxdepth 1 -name 'grafos.*' -printf '%f\n' | sort; }

case "${1:-}" in
snapshot)
    list >"$2"
    ;;
verify)
    leaked=$(comm -13 "$2" <(list))
    if [[ -n "$leaked" ]]; then
        echo "leak check: segments left in /dev/shm:" >&2
        echo "$leaked" >&2
        exit 1
    fi
    echo "leak check: /dev/shm holds nothing new of grafos"
    ;;
*)
    echo "usage: $0 snapshot|verify FILE" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# hubgate load test: fake Security Hub + hubgate (release build) on 127.0.0.1, wrk against
# pre-signed requests, Markdown table on stdout and in benches/load/results.md.
#
#   benches/load/run.sh                                   # builds target/release/hubgate
#   HUBGATE_BIN=target/release/hubgate benches/load/run.sh  # skip the build
#   DURATION=5 CONNECTIONS=8 THREADS=2 benches/load/run.sh  # wrk settings (defaults 10 / 16 / 2)
#   KEEP_WORK=1 ...                                       # keep the temp folder (configs, logs, audit)
#
# Exit status: 0 when every check passed, 1 when a check found a problem (see the report).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hubgate-load.XXXXXX")
PIDS="$WORK/pids"
: >"$PIDS"
DRIVER=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # the driver stops its own children; then make sure every process it recorded is gone
    if [ -n "$DRIVER" ] && kill -0 "$DRIVER" 2>/dev/null; then
        kill -TERM "$DRIVER" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DRIVER" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DRIVER" 2>/dev/null || true
    fi
    if [ -s "$PIDS" ]; then
        while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$PIDS"
        sleep 0.3
        while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$PIDS"
    fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk not found: installing it with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

if [ -z "${HUBGATE_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release)
    HUBGATE_BIN="$REPO/target/release/hubgate"
fi
case "$HUBGATE_BIN" in /*) ;; *) HUBGATE_BIN="$REPO/$HUBGATE_BIN" ;; esac
[ -x "$HUBGATE_BIN" ] || { echo "no hubgate binary at $HUBGATE_BIN" >&2; exit 2; }

# run the driver in the background and wait for it, so that a signal reaches the trap at once
"$PY" "$HERE/bench.py" --bin "$HUBGATE_BIN" --workdir "$WORK" --pidfile "$PIDS" "$@" &
DRIVER=$!
set +e
wait "$DRIVER"
status=$?
set -e
DRIVER=""
exit "$status"

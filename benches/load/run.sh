#!/usr/bin/env bash
# hubgate load tests, all on 127.0.0.1; Markdown tables on stdout and in benches/load/results.md.
#
# Two suites (SUITE=native|fake|all, default all; run in that order):
# - native (cpu.py): hubgate and nginx (plain reverse proxy), 1 worker each, in front of the same
#   native stub upstream (benches/load/stub_upstream.rs, a cargo example); per path: requests/s,
#   latency, CPU µs per request of the proxy process, upstream calls per request.
# - fake (bench.py): hubgate against the Python fake Security Hub (tests/fake_securityhub.py),
#   pre-signed requests, the audit checked record by record.
#
#   benches/load/run.sh                                   # builds hubgate + stub_upstream (release)
#   HUBGATE_BIN=target/release/hubgate STUB_BIN=target/release/examples/stub_upstream \
#       benches/load/run.sh                               # skip the build
#   CARGO_TARGET_DIR=/work/target-bench benches/load/run.sh   # build (and look) there
#   DURATION=5 CONNECTIONS=8 THREADS=2 benches/load/run.sh  # wrk settings (defaults 10 / 16 / 2)
#   IDENTITY=static ...          # native suite: identity.mode = "static" (unsigned requests)
#   ONLY=deny100,allow100 ...    # native suite: only these paths
#   PACED_NGINX=1 ...            # native suite: also nginx paced to hubgate's request rate,
#                                # reported beside the flat-out yardstick
#   WORKERS=2 ...                # native suite: hubgate's worker_threads and nginx's
#                                # worker_processes (default 1)
#   HUBGATE_SRC=/path/to/checkout ...  # where HUBGATE_BIN was built from (for the report's
#                                      commit and the policies loaded); default this repository
#   KEEP_WORK=1 ...              # keep the temp folder (configs, logs, audit, wrk output)
#
# wrk and (for the native suite) nginx are installed with apt-get when missing (as root).
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

SUITE=${SUITE:-all}
case "$SUITE" in native | fake | all) ;; *) echo "SUITE must be native, fake or all" >&2; exit 2 ;; esac
want() { [ "$SUITE" = all ] || [ "$SUITE" = "$1" ]; }

NGINX_BIN=${NGINX:-$(command -v nginx || true)}
[ -z "$NGINX_BIN" ] && [ -x /usr/sbin/nginx ] && NGINX_BIN=/usr/sbin/nginx
if want native && [ -z "$NGINX_BIN" ]; then
    echo "nginx not found: installing it with apt-get" >&2
    # keep the package from starting its own nginx on port 80 (no-op where policy-rc.d exists)
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    set +e
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    status=$?
    set -e
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ "$status" = 0 ] || exit "$status"
    NGINX_BIN=/usr/sbin/nginx
fi

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
build=()
[ -z "${HUBGATE_BIN:-}" ] && build+=(--bin hubgate)
want native && [ -z "${STUB_BIN:-}" ] && build+=(--example stub_upstream)
if [ "${#build[@]}" -gt 0 ]; then
    (cd "$REPO" && cargo build --release "${build[@]}")
fi
HUBGATE_BIN=${HUBGATE_BIN:-$TARGET/release/hubgate}
STUB_BIN=${STUB_BIN:-$TARGET/release/examples/stub_upstream}
case "$HUBGATE_BIN" in /*) ;; *) HUBGATE_BIN="$REPO/$HUBGATE_BIN" ;; esac
case "$STUB_BIN" in /*) ;; *) STUB_BIN="$REPO/$STUB_BIN" ;; esac
[ -x "$HUBGATE_BIN" ] || { echo "no hubgate binary at $HUBGATE_BIN" >&2; exit 2; }
if want native; then
    [ -x "$STUB_BIN" ] || { echo "no stub_upstream binary at $STUB_BIN" >&2; exit 2; }
fi

# run a driver in the background and wait for it, so that a signal reaches the trap at once
drive() {
    "$@" &
    DRIVER=$!
    set +e
    wait "$DRIVER"
    local rc=$?
    set -e
    DRIVER=""
    return "$rc"
}

overall=0
parts=()
if want native; then
    mkdir -p "$WORK/native"
    drive "$PY" "$HERE/cpu.py" --bin "$HUBGATE_BIN" --stub "$STUB_BIN" --nginx "$NGINX_BIN" \
        --workdir "$WORK/native" --pidfile "$PIDS" --results "$WORK/native.md" || overall=$?
    [ -s "$WORK/native.md" ] && parts+=("$WORK/native.md")
fi
if want fake; then
    mkdir -p "$WORK/fake"
    drive "$PY" "$HERE/bench.py" --bin "$HUBGATE_BIN" --workdir "$WORK/fake" --pidfile "$PIDS" \
        --results "$WORK/fake.md" "$@" || { rc=$?; [ "$overall" = 0 ] && overall=$rc; }
    [ -s "$WORK/fake.md" ] && parts+=("$WORK/fake.md")
fi
if [ "${#parts[@]}" -gt 0 ]; then
    RESULTS=${RESULTS:-$HERE/results.md}
    first=1
    for p in "${parts[@]}"; do
        [ -n "$first" ] || printf '\n---\n\n'
        first=""
        cat "$p"
    done >"$RESULTS"
    echo "results written to $RESULTS"
fi
exit "$overall"

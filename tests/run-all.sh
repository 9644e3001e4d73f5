#!/usr/bin/env bash
# Runs every hubgate test: Rust unit tests, the Rego policy tests, and the Python suites
# (API-model checks and the black-box end-to-end suite against the real binary, driven by
# boto3 and the AWS CLI through a fake Security Hub on 127.0.0.1).
# Needs only a Rust toolchain and Python 3.11; it creates .venv and installs what it needs
# (and redis-server from Debian's packages, for the replica tests, when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how long the run has taken so far, so that README's figure can be checked.
step() { printf '\n==> %s (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

step "redis-server (replica tests: shared pacing and cache)"
# From Debian's package. The replica tests fail without it, so a bare CI machine gets it here.
if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null
    fi
fi
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
redis-server --version

step "cargo build"
cargo build --locked

step "cargo test"
cargo test --locked

step "hubgate test policies (Rego tests)"
./target/debug/hubgate test policies --coverage --threshold 90

step "python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

step "pytest tests/ (model checks and end-to-end suite)"
HUBGATE_BIN="$PWD/target/debug/hubgate" .venv/bin/python -m pytest tests -q -p no:cacheprovider

step "every test passed"

#!/usr/bin/env bash
# Runs every hubgate test: Rust unit tests, the Rego policy tests, and the Python suites
# (API-model checks and the black-box end-to-end suite against the real binary, driven by
# boto3 and the AWS CLI through a fake Security Hub on 127.0.0.1).
# Needs only a Rust toolchain and Python 3.11; it creates .venv and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

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

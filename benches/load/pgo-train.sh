#!/usr/bin/env bash
# Regenerates deploy/pgo/hubgate.profdata.xz, the profile deploy/build-release.sh builds the
# release binary with (profile-guided optimisation). Run it after changes to the request path.
#
#   benches/load/pgo-train.sh
#
# 1. builds hubgate instrumented (-Cprofile-generate) and the native stub, in target/pgo-train;
# 2. runs the native load suite through it (benches/load/run.sh, every path, DURATION=5), which
#    weighs the profile toward the hot paths: denial, cached and cold BatchUpdateFindings;
# 3. runs part of the end-to-end suite through it (boto3 and the AWS CLI, the other operations,
#    V2, imports, members' reads, TLS, passthrough, OCSF, per-finding apply), so that those
#    paths are in the profile too, not optimised as never run;
# 4. merges the counts (llvm-profdata of rustup's llvm-tools component, which matches rustc's
#    LLVM) and writes them sparse and xz-compressed, with the dependency tree they were recorded
#    against (deploy/pgo/hubgate.profdata.deps: a change to it stales the whole profile).
# Needs what run.sh needs (wrk and nginx, installed when missing, as root), .venv (tests/
# run-all.sh makes it; the AWS CLI tests look for .venv/bin/aws there, so PYTHON=..., which
# names another interpreter for the rest, does not replace it) and `rustup component add
# llvm-tools`. A test that fails stops the script before the merge.
# STUB_BIN=... uses a stub_upstream already built instead of building it.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
TARGET=$REPO/target/pgo-train
DATA=$TARGET/profraw
rm -rf "$DATA"
mkdir -p "$DATA"

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$sysroot/lib/rustlib/$host/bin/llvm-profdata
[ -x "$PROFDATA" ] || { echo "no llvm-profdata: rustup component add llvm-tools" >&2; exit 2; }

PYTHON=${PYTHON:-$REPO/.venv/bin/python}
# The stub is built apart: only hubgate's counts are wanted.
if [ -z "${STUB_BIN:-}" ]; then
    CARGO_TARGET_DIR=$TARGET/plain cargo build --release --locked --example stub_upstream
    STUB_BIN=$TARGET/plain/release/examples/stub_upstream
fi
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$TARGET/instrumented \
    cargo build --release --locked --bin hubgate
# What the build scripts and proc macros counted while they ran is not hubgate's.
rm -f "$DATA"/*.profraw
BIN=$TARGET/instrumented/release/hubgate

HUBGATE_BIN=$BIN STUB_BIN=$STUB_BIN SUITE=native PYTHON=$PYTHON \
    DURATION=${DURATION:-5} RESULTS=$TARGET/load.md bash benches/load/run.sh
HUBGATE_BIN=$BIN "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/e2e/test_boto3.py tests/e2e/test_other_operations.py tests/e2e/test_member_reads.py \
    tests/e2e/test_tls.py tests/e2e/test_passthrough.py tests/e2e/test_ocsf.py \
    tests/e2e/test_partial.py tests/e2e/test_soundness.py tests/e2e/test_adversarial_v2.py \
    tests/e2e/test_adversarial_imports2.py tests/e2e/test_auth.py

"$PROFDATA" merge --sparse -o "$TARGET/hubgate.profdata" "$DATA"
"$PROFDATA" show "$TARGET/hubgate.profdata" | tail -4
xz -9 -c "$TARGET/hubgate.profdata" > deploy/pgo/hubgate.profdata.xz
# What the profile's function names were derived from (see deploy/pgo/deps.sh).
{
    echo "# What deploy/pgo/hubgate.profdata.xz was recorded against (deploy/pgo/deps.sh), written by"
    echo "# benches/load/pgo-train.sh with $(rustc --version). Lines starting with # are not compared."
    bash deploy/pgo/deps.sh
} > deploy/pgo/hubgate.profdata.deps
echo "wrote deploy/pgo/hubgate.profdata.xz ($(rustc --version))"

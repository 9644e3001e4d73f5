#!/usr/bin/env bash
# Builds target/release/hubgate (the same as `cargo build --release --locked`), optimised with
# the profile in deploy/pgo/hubgate.profdata.xz (profile-guided optimisation: the compiler lays
# out and inlines the code for the branches the load benchmark takes). A profile changes how
# fast the code runs, never what it does. A function changed since the profile was made is
# optimised without it; benches/load/pgo-train.sh makes a new one.
#
#   deploy/build-release.sh [cargo build options]
#
# Where the toolchain cannot read the profile (an LLVM older than the one that wrote it), it
# says so and builds without it.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=$PWD/target/pgo/hubgate.profdata
mkdir -p "$(dirname "$profile")"
xz -dc deploy/pgo/hubgate.profdata.xz >"$profile"
# A profile recorded against another dependency tree still builds, and only slower: every
# hubgate function's name changed, so none is optimised with it. Said, not refused.
if [ -f deploy/pgo/hubgate.profdata.deps ] && current=$(bash deploy/pgo/deps.sh 2>/dev/null) &&
    [ "$(grep -v '^#' deploy/pgo/hubgate.profdata.deps)" != "$current" ]; then
    echo "build-release.sh: the profile was recorded against another dependency tree or release" \
        "profile (deploy/pgo/hubgate.profdata.deps against deploy/pgo/deps.sh): it matches none" \
        "of hubgate's own functions; run benches/load/pgo-train.sh" >&2
fi
if RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch" \
    cargo build --release --locked "$@"; then
    exit 0
fi
echo "build-release.sh: the build with the profile failed (see above); building without it" >&2
cargo build --release --locked "$@"

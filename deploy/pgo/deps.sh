#!/usr/bin/env bash
# Prints what the names of hubgate's compiled functions are derived from, besides the source:
# the release profile's settings and the crates hubgate is built with, their versions and
# features. The profile (hubgate.profdata.xz) finds each function by that name, and cargo's
# hash in every hubgate symbol changes with any of these: one new dependency renames every
# function, and the whole profile then matches none of them (stop 56 measured +11.6%
# instructions on the cold update). benches/load/pgo-train.sh writes this list beside the
# profile (hubgate.profdata.deps); build-release.sh and tests/e2e/test_release_build.py
# compare it with the checkout's. Paths are left out: a clone elsewhere names the same
# functions.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "[profile.release]"
sed -n '/^\[profile\.release\]/,/^\[/{/^\[/d;/^[[:space:]]*#/d;/^[[:space:]]*$/d;p;}' Cargo.toml
echo "[crates]"
cargo tree --locked -e normal,build -p hubgate --prefix none -f '{p} {f}' |
    sed -E 's/ \(\*\)$//; s/ \([^)]*\)//; s/[[:space:]]+$//' | LC_ALL=C sort -u

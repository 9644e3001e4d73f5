#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, starting from the committed seeds and dictionaries
# (fuzz/seeds/<target>/, fuzz/dicts/<target>.dict). CI calls this.
#   FUZZ_SECONDS     seconds per target (default 60)
#   FUZZ_TARGETS     targets to run (default: all of them)
#   FUZZ_SANITIZER   cargo-fuzz sanitizer (default none: hubgate forbids unsafe code; debug
#                    assertions and overflow checks stay on). Use "address" for ASan.
# Exits non-zero on the first crash, naming the input that crashed.
#   bash fuzz/run.sh build   only installs cargo-fuzz (if missing) and builds the targets: CI
#                            starts this early in the background (.ci/run), and the later full
#                            run finds everything built.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-judge_body sigv4_authorization route_match lookup_page}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi
# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
    echo "==> installing a C++ compiler for libFuzzer"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq g++ >/dev/null
fi

fuzz=(cargo +nightly fuzz)
echo "==> cargo +nightly fuzz build -s $sanitizer"
"${fuzz[@]}" build -s "$sanitizer"
[ "${1:-}" = build ] && exit 0

status=0
for target in $targets; do
    corpus="corpus/$target"
    rm -rf "$corpus"
    mkdir -p "$corpus" "artifacts/$target"
    if [ -d "seeds/$target" ]; then
        cp seeds/"$target"/* "$corpus"/
    fi
    dict=()
    [ -f "dicts/$target.dict" ] && dict=(-dict="dicts/$target.dict")
    log="$(mktemp)"
    echo "==> $target: ${seconds}s from $(ls "$corpus" | wc -l) seeds"
    set +e
    "${fuzz[@]}" run -s "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "!!! $target failed (exit $rc):"
        grep -m 1 -A 8 'panicked at' "$log" || tail -n 40 "$log"
        crash="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        if [ -z "$crash" ]; then
            echo "!!! $target failed without recording a crashing input (see the output above)"
        else
            case "$crash" in
                /*) ;;
                *) crash="$PWD/${crash#./}" ;;
            esac
            echo "!!! crashing input: $crash"
            echo "!!! reproduce: (cd fuzz && cargo +nightly fuzz run -s $sanitizer $target $crash)"
        fi
    else
        grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | sed "s/^/$target: /"
        grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" \
            | sed "s/^/$target: /" || true
    fi
    rm -f "$log"
    [ "$status" -eq 0 ] || break
done
exit "$status"

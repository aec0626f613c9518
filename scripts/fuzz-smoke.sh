#!/usr/bin/env bash
# Short fuzzing smoke run of every cargo-fuzz target in fuzz/ (see fuzz/README.md): replays the
# kept corpus, then mutates for FUZZ_SMOKE_SECONDS (default 20) or FUZZ_SMOKE_RUNS (default
# 50000) executions, whichever comes first. New inputs go to a temporary directory, never into
# fuzz/corpus/. Any crash, panic, hang (>10 s) or OOM (>2 GB) fails the script.
#
# Needs a nightly toolchain (libFuzzer's coverage instrumentation is nightly-only) and
# cargo-fuzz; installs both when missing (rustup, `cargo install --locked`, pinned version),
# like scripts/install-test-deps.sh does for the servers. Set FUZZ_SMOKE=0 to skip it.
#
#   scripts/fuzz-smoke.sh                 every target
#   scripts/fuzz-smoke.sh cesql yaml_load some of them
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH="${FUZZ_SMOKE_SECONDS:-20}"
RUNS_EACH="${FUZZ_SMOKE_RUNS:-50000}"
TARGETS=("$@")
if [ "${#TARGETS[@]}" = 0 ]; then TARGETS=(http_decode cesql jsonpath yaml_load); fi

if [ "${FUZZ_SMOKE:-1}" = 0 ]; then
    echo "fuzz-smoke: skipped (FUZZ_SMOKE=0)"
    exit 0
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    if ! command -v rustup >/dev/null; then
        echo "fuzz-smoke: skipped: no nightly toolchain and no rustup to install one" >&2
        exit 0
    fi
    echo "fuzz-smoke: installing the nightly toolchain (rustup, minimal profile)"
    rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Release with debug assertions and overflow checks; no sanitizer: the fuzzed crates have no
# `unsafe`, and without ASan each execution is about twice as fast; 8 codegen units build much
# faster on a small machine (fuzz/README.md).
# The instrumented build is kept outside the checkout (CI runs from a clean clone), like the
# servers the tests install: only Sluice's own crates are rebuilt when they change.
TARGET_DIR="${SLUICE_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/fuzz-target}"
mkdir -p "$TARGET_DIR"
FLAGS=(-O -a -s none --codegen-units 8 --target-dir "$TARGET_DIR")
echo "==> cargo fuzz build (nightly; the first build takes several minutes)"
cargo +nightly fuzz build "${FLAGS[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${TARGETS[@]}"; do
    echo "==> fuzz $t: corpus + ${SECONDS_EACH}s / ${RUNS_EACH} runs"
    mkdir -p "$work/$t"
    # The first directory receives new inputs; fuzz/corpus/$t is only read.
    if ! cargo +nightly fuzz run "${FLAGS[@]}" "$t" "$work/$t" "corpus/$t" -- \
        -runs="$RUNS_EACH" -max_total_time="$SECONDS_EACH" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log" >&2
        echo "fuzz-smoke: $t FAILED; the input is in fuzz/artifacts/$t/ (fuzz/README.md says how to replay it)" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' "$work/$t.log" | tr '\n' ' '
    echo
done
echo "==> fuzz smoke passed"

#!/usr/bin/env bash
# Runs every check and test of Sluice: formatting, clippy (-D warnings) and the whole test
# suite, including the Kafka and NATS tests against real servers on loopback. Installs what
# the tests need first (nats-server, Apache Kafka's jars) when it is missing. Ends with a short
# fuzzing run of each cargo-fuzz target (scripts/fuzz-smoke.sh; installs nightly and cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/install-test-deps.sh ]; then
  scripts/install-test-deps.sh
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo test (all features)"
cargo test --workspace --all-features

echo "==> fuzz smoke run of every fuzz target (nightly; FUZZ_SMOKE=0 skips it)"
scripts/fuzz-smoke.sh

echo "==> all checks passed"

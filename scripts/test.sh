#!/usr/bin/env bash
# Runs the whole test suite. The first run builds RocksDB's C++ (10-20 minutes on 2 cores);
# cargo's target directory lives outside the clone so later runs are warm.
#   RUN_SLOW_TESTS=1 scripts/test.sh   also runs the slow suites.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tt-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --locked --workspace --bins
cargo test --locked --workspace -- --test-threads "${TT_TEST_THREADS:-2}"

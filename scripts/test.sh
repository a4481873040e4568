#!/usr/bin/env bash
# Runs the whole test suite. The first run builds RocksDB's C++ (10-20 minutes on 2 cores);
# cargo's target directory lives outside the clone so later runs are warm.
#   RUN_SLOW_TESTS=1 scripts/test.sh   also runs the slow suites.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium + chromium-driver: the dashboard's browser test (coordinator/tests/dashboard_browser.rs).
scripts/ensure-deps.sh chromium chromium-driver
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tt-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --locked --workspace --bins
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace -- --test-threads "${TT_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"

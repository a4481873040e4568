#!/usr/bin/env bash
# The main job: build everything, then show the whole system at work on this machine — a
# three-node coordinator cluster and five deploy agents deploy a real service to canary, promote
# it to prod, then roll a second version back. Everything stays up until Ctrl-C.
# Extra arguments go to `tt dev demo` (see `tt dev demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tt-target}"
cargo build --locked --workspace --bins
exec "$CARGO_TARGET_DIR/debug/tt" dev demo --dir "${TT_DEMO_DIR:-.tt-demo}" "$@"

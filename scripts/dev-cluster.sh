#!/usr/bin/env bash
# The main job, for now: build everything and run a local three-node coordinator cluster in
# the foreground (Ctrl-C stops it). Extra arguments go to `tt dev cluster`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tt-target}"
cargo build --locked --workspace --bins
exec "$CARGO_TARGET_DIR/debug/tt" dev cluster --nodes 3 --dir "${TT_DEV_DIR:-.tt-dev}" "$@"

#!/usr/bin/env bash
# Runs raftlord's whole test suite: unit, storage conformance, in-process clusters and real
# multi-process tests, then prints one summary line. Builds go to $CARGO_TARGET_DIR (default:
# ~/.cache/raftlord-target), so repeated runs and fresh clones reuse the slow RocksDB build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/raftlord-target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

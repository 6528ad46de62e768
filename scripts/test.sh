#!/usr/bin/env bash
# Runs raftlord's whole test suite: unit, storage conformance, in-process clusters and real
# multi-process tests. Builds go to $CARGO_TARGET_DIR (default: ~/.cache/raftlord-target), so
# repeated runs and fresh clones reuse the slow RocksDB build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/raftlord-target}"
cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# Builds raftlord and runs `raftlord dev`: one node with every role, data in ./raftlord-data,
# HTTP on 127.0.0.1:8090. Extra arguments go to `raftlord dev` (see `raftlord dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/raftlord-target}"
exec cargo run --locked --bin raftlord -- dev "$@"

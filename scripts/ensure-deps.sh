#!/usr/bin/env bash
# Installs the system packages raftlord's build needs, when they are missing (Debian/Ubuntu).
# RocksDB's Rust bindings are generated with bindgen, which needs libclang.
# With --bench, also the peers the benchmarks run side by side: etcd and DuckDB.
set -euo pipefail

bench=false
[ "${1:-}" = "--bench" ] && bench=true

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# The fault-injection tests: network namespaces (ip), private mounts (unshare) and a node's
# wall clock stepped on its own (libfaketime).
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
dpkg -s libfaketime >/dev/null 2>&1 || missing+=(libfaketime)
# The https input test makes its own CA and server certificate.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if $bench; then
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The ingestion tests read the Parquet segments back with pyarrow, an independent reader, and
# run S3 deep storage and the s3 input source against a real S3 API server (moto's) read with
# boto3.
pip_install() {
  python3 -m pip install --quiet "$@" || python3 -m pip install --quiet --break-system-packages "$@"
}
if ! python3 -c "import pyarrow" >/dev/null 2>&1; then
  echo "installing: pyarrow (PyPI)" >&2
  pip_install pyarrow
fi
if ! python3 -c "import moto.server, flask, flask_cors, boto3" >/dev/null 2>&1; then
  echo "installing: moto[server] (PyPI)" >&2
  pip_install "moto[server]"
fi
# The fuzz test drives every route of /openapi.json with schemathesis.
if ! python3 -c "import schemathesis" >/dev/null 2>&1; then
  echo "installing: schemathesis (PyPI)" >&2
  pip_install schemathesis
fi
if $bench && ! python3 -c "import duckdb" >/dev/null 2>&1; then
  echo "installing: duckdb (PyPI)" >&2
  pip_install duckdb
fi

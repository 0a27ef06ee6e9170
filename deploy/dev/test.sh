#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace
# (unit, integration, and end to end with real RocksDB, QUIC, certificates and Prometheus).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/setup.sh
. deploy/dev/env.sh
cargo test --workspace --locked "$@"

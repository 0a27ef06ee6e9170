#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and runs the whole relay path live
# (probe exporters, a gateway, three agents, a real Prometheus as the global view).
# Arguments go to `uplink-loadtest demo`, e.g. --duration 60s (see --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/setup.sh
. deploy/dev/env.sh
cargo build --workspace --bins --locked
exec "$CARGO_TARGET_DIR/debug/uplink-loadtest" demo "$@"

# Sourced by the dev scripts: one cargo target directory per machine, outside the clone, so the
# RocksDB build (about 16 minutes on 2 cores) is done once and shared by every clone and by CI.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/uplink/target}"
mkdir -p "$CARGO_TARGET_DIR"
# The current peers (Prometheus 3, VictoriaMetrics and vmagent), fetched by deploy/dev/peers.sh
# into a per-machine cache: the tests and the benchmarks find them through these variables.
peers_env="${UPLINK_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/uplink/peers}/peers.env"
if [[ -f "$peers_env" ]]; then
  set -a
  . "$peers_env"
  set +a
fi
unset peers_env

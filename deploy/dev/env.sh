# Sourced by the dev scripts: one cargo target directory per machine, outside the clone, so the
# RocksDB build (about 16 minutes on 2 cores) is done once and shared by every clone and by CI.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/uplink/target}"
mkdir -p "$CARGO_TARGET_DIR"

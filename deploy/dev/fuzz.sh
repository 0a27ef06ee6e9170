#!/usr/bin/env bash
# Coverage-guided fuzzing of the network decoders (fuzz/): builds the libFuzzer targets with
# the sanitizer-coverage flags cargo-fuzz passes (all stable rustc options), in a target
# directory of their own, then runs each for SECONDS (default 20) on a corpus kept per machine.
# Usage: deploy/dev/fuzz.sh [SECONDS]   (a crash leaves its input in the corpus directory and
# fails the run).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/dev/env.sh
seconds="${1:-20}"
cache="$(dirname "$CARGO_TARGET_DIR")"
export CARGO_TARGET_DIR="$cache/target-fuzz"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
targets=(wire_frames tunnel_batches tunnel_bodies remote_write scrape_bodies)
# An explicit --target keeps RUSTFLAGS off build scripts (as cargo-fuzz does).
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --manifest-path fuzz/Cargo.toml --release --locked --target "$host" \
  $(printf -- '--bin %s ' "${targets[@]}")
for t in "${targets[@]}"; do
  corpus="$cache/fuzz-corpus/$t"
  mkdir -p "$corpus"
  # Seeds made by the real encoders (fuzz/src/seeds.rs), so each target starts from valid
  # inputs; what the fuzzer finds accumulates in the per-machine corpus.
  cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  echo "fuzz: $t for ${seconds}s (corpus $corpus)"
  "$CARGO_TARGET_DIR/$host/release/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -artifact_prefix="$corpus/crash-" -print_final_stats=1 "$corpus" 2>&1 | tail -4
done

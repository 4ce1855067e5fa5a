#!/usr/bin/env bash
# Runs fuzz targets, one after another, each for RUNS executions (default
# 10 million) or MAX_TIME seconds (default 1800), whichever comes first.
# New corpus entries go to fuzz/corpus/<target> (git-ignored); the saved
# seeds in fuzz/seeds/<target> are read as well, never written.
#
#   fuzz/run.sh                   every target
#   fuzz/run.sh tracker sql       some of them
#   RUNS=100000 fuzz/run.sh frame
#
# SANITIZER=address builds with AddressSanitizer (slower; pgrelay itself
# forbids unsafe code, so the default is none).
set -euo pipefail
cd "$(dirname "$0")"

RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-1800}
SANITIZER=${SANITIZER:-none}
ALL=(frame startup scram_server scram_client tracker sql)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  # The tracker checks its whole state after every operation: 1 KiB (some
  # 300 operations) is script enough, and longer inputs only run slower.
  max_len=4096
  [ "$target" != tracker ] || max_len=1024
  echo "== $target: up to $RUNS runs or $MAX_TIME s"
  start=$(date +%s)
  cargo +nightly fuzz run --sanitizer "$SANITIZER" "$target" "corpus/$target" "seeds/$target" -- \
    -runs="$RUNS" -max_total_time="$MAX_TIME" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
  echo "== $target: done in $(( $(date +%s) - start )) s"
done

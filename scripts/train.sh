#!/usr/bin/env bash
# Quick start 1: installs what is missing, builds the example trainer and trains the MoE
# language model on the fortunes corpus with examples/train_moe_lm/fortunes.yaml.
# Extra arguments are config overrides, e.g. scripts/train.sh train.steps=200
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" train
build=${TMOE_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTMOE_BUILD_TESTS=OFF -DTMOE_BUILD_BENCH=OFF >/dev/null
start=$(date +%s)
if ! cmake --build "$build" -j "$(nproc)" --target train_moe_lm >"$build/build-train.log" 2>&1; then
  grep -E "error|Error" "$build/build-train.log" | head -60
  echo "build failed; full log: $build/build-train.log"
  exit 1
fi
echo "built train_moe_lm in $(( $(date +%s) - start )) s"
mkdir -p "$root/runs"
exec "$build/examples/train_moe_lm/train_moe_lm" --config "$root/examples/train_moe_lm/fortunes.yaml" \
  train.metrics_file="$root/runs/metrics.jsonl" "$@"

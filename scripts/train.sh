#!/usr/bin/env bash
# Quick start 1: installs what is missing, builds tmoe-prep and the example trainer,
# prepares the fortunes corpus into token shards (data/fortunes, once) and trains the MoE
# language model with examples/train_moe_lm/fortunes.yaml. A killed run resumes from its
# newest checkpoint (runs/checkpoints) when started again.
# Extra arguments are config overrides, e.g. scripts/train.sh train.steps=200
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" train
build=${TMOE_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTMOE_BUILD_TESTS=OFF -DTMOE_BUILD_BENCH=OFF >/dev/null
start=$(date +%s)
if ! cmake --build "$build" -j "$(nproc)" --target tmoe-prep train_moe_lm >"$build/build-train.log" 2>&1; then
  grep -E "error|Error" "$build/build-train.log" | head -60
  echo "build failed; full log: $build/build-train.log"
  exit 1
fi
echo "built tmoe-prep and train_moe_lm in $(( $(date +%s) - start )) s"
if [ ! -f "$root/data/fortunes/dataset.json" ]; then
  "$build/tools/tmoe-prep" --out "$root/data/fortunes" --source delimited:/usr/share/games/fortunes
fi
mkdir -p "$root/runs"
exec "$build/examples/train_moe_lm/train_moe_lm" --config "$root/examples/train_moe_lm/fortunes.yaml" \
  data.shards="$root/data/fortunes" checkpoint.dir="$root/runs/checkpoints" \
  train.metrics_file="$root/runs/metrics.jsonl" "$@"

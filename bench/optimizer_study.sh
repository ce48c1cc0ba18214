#!/usr/bin/env bash
# Optimizer study on the example corpus (fortunes): AdamW, Lion and the seed's sign-momentum
# rule, each over a small learning-rate sweep (Lion and sign_momentum 3-10x lower than
# AdamW; four rates each), 3 seeds each, the same steps; prints the validation loss table (mean ± std over
# seeds) and the best learning rate of each rule.
#   bench/optimizer_study.sh [build dir] [steps]     (needs train_moe_lm and tmoe-prep built)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
steps=${2:-600}
jobs=$(nproc)
out=$(mktemp -d)
shards=$out/shards
"$build/tools/tmoe-prep" --out "$shards" >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F); $steps steps per run"
model="model.d_model=96 model.n_layers=2 model.n_heads=4 model.n_experts=8 model.top_k=2 model.d_expert=128
       model.context=64 train.seq_len=64 train.batch_size=16 train.eval_interval=$steps train.eval_batches=8
       train.log_interval=$steps train.sample_tokens=0 train.threads=1 checkpoint.dir= data.shards=$shards"
runs=()
for opt in "adamw 3e-4 1e-3 3e-3 1e-2" "lion 3e-5 1e-4 3e-4 1e-3" "sign_momentum 1e-4 3e-4 1e-3 3e-3"; do
  set -- $opt
  name=$1; shift
  for lr in "$@"; do
    for seed in 1 2 3; do runs+=("$name $lr $seed"); done
  done
done
run_one() {
  set -- $1
  local log=$out/$1_$2_$3.log
  "$build/examples/train_moe_lm/train_moe_lm" --config "$root/examples/train_moe_lm/fortunes.yaml" $model \
    train.steps=$steps train.optimizer=$1 train.lr=$2 train.seed=$3 > "$log" 2>&1 || echo "FAILED $log" >&2
  printf '%s %s %s %s\n' "$1" "$2" "$3" "$(sed -n 's/^final validation loss \([0-9.]*\).*/\1/p' "$log")" >> "$out/results.txt"
}
export -f run_one
export build root model steps out
printf '%s\n' "${runs[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "{}"'
/usr/bin/python3 - "$out/results.txt" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    opt, lr, seed, val = line.split()
    rows[(opt, float(lr))].append(float(val))
print("\n| optimizer | lr | val loss (mean ± std over 3 seeds) | runs |")
print("| --- | --- | --- | --- |")
best = {}
for (opt, lr), v in sorted(rows.items()):
    m, s = statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0
    print(f"| {opt} | {lr:g} | {m:.4f} ± {s:.4f} | {len(v)} |")
    if opt not in best or m < best[opt][1]:
        best[opt] = (lr, m, s)
print("\nbest learning rate of each rule:")
for opt, (lr, m, s) in best.items():
    print(f"  {opt:14s} lr {lr:g}: {m:.4f} ± {s:.4f}")
PY

#!/usr/bin/env bash
# The distributed benchmark of docs/scaling.md: the same global batch (4 micro-batches of
# 4 x 256 tokens, bench_train_step's model) on 1, 2 and 4 ranks (4 oversubscribes a 2-core
# machine), for data parallel, ZeRO-1, native reduction, PowerSGD, expert parallel, tensor
# parallel, pipeline parallel (untied head: the embedding and head live on different
# stages) and their products with data parallelism; then the PyTorch DDP peer (gloo) on
# the same ranks.
#   bench/run_parallel_bench.sh [BUILD_DIR] > results.jsonl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
bin=$build/bench/bench_parallel
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
steps=${STEPS:-6}
run() { local np=$1; shift; "${mpirun[@]}" -np "$np" "$bin" --steps "$steps" --warmup 2 "$@"; }
run 1
for np in 2 4; do
  run $np
  run $np parallel.zero=true
  run $np parallel.reduction=native
  run $np parallel.powersgd_rank=4
  run $np parallel.expert=$np
  run $np parallel.tensor=$np
  run $np parallel.pipeline=$np model.tie_embeddings=false
done
run 4 parallel.data=2 parallel.expert=2
run 4 parallel.data=2 parallel.tensor=2
run 4 parallel.data=2 parallel.pipeline=2 model.tie_embeddings=false
run 1 model.tie_embeddings=false
# One rank with both cores, for reference.
"${mpirun[@]/OMP_NUM_THREADS=1/OMP_NUM_THREADS=2}" -np 1 "$bin" --steps "$steps" --warmup 2
# The PyTorch peer: DDP over gloo, the same global batch.
/usr/bin/python3 "$root/bench/peer_torch_ddp.py" --ranks 1 2 4 --threads-per-rank 1 --steps "$steps" --warmup 2 \
  --batch 4 --seq 256 --global-micro 4

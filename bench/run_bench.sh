#!/usr/bin/env bash
# Runs tmoe's training-step benchmark and the PyTorch peer side by side, each with 1 and 2
# threads, and prints the table and the best-vs-best ratio.
#   bench/run_bench.sh [build dir]          (build with scripts/test.sh or cmake first)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
"$root/scripts/setup.sh" bench
cmake --build "$build" --target bench_train_step >/dev/null
out=$(mktemp -d)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
"$build/bench/bench_train_step" --steps 9 --warmup 5 | tee "$out/tmoe.jsonl"
# The machine sets OPENBLAS_CORETYPE/L2_SIZE for old OpenBLAS builds; they slow the peer, so
# the peer runs without them (it prints the kernel OpenBLAS picked).
# Both intra-op thread settings of torch, each with OpenBLAS on 1 and on 2 threads.
for blas in 1 2; do
  OPENBLAS_NUM_THREADS=$blas env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    /usr/bin/python3 "$root/bench/peer_torch.py" --steps 9 --warmup 5 | tee -a "$out/torch.jsonl"
done
/usr/bin/python3 - "$out/tmoe.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
rows = []
for f in sys.argv[1:]:
    rows += [json.loads(l) for l in open(f) if l.startswith("{")]
print()
peak = {r["threads"]: r["sgemm_peak_gflops"] for r in rows if r["impl"] == "tmoe"}
print("MFU is against the Eigen SGEMM peak measured by bench_train_step at the same thread count;")
print("the peer's own BLAS peak (torch.matmul 1024^3) is shown beside it.")
print()
print("| impl | threads | BLAS threads | tokens/s | step ms | model GFLOP/s | SGEMM peak GFLOP/s (own) | MFU vs Eigen peak |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    p = peak.get(r["threads"] if r["impl"] == "tmoe" else max(r["threads"], int(r.get("blas_threads", 1))),
                 r["sgemm_peak_gflops"])
    print(f"| {r['impl']} | {r['threads']} | {r.get('blas_threads', '-')} | {r['tokens_per_s']:.0f} | {r['step_ms']:.0f} | "
          f"{r['achieved_gflops']:.1f} | {r['sgemm_peak_gflops']:.1f} | {100*r['achieved_gflops']/p:.1f}% |")
best = {i: max(r["tokens_per_s"] for r in rows if r["impl"] == i) for i in ("tmoe", "pytorch")}
print(f"\nbest vs best: tmoe {best['tmoe']:.0f} tokens/s / PyTorch {best['pytorch']:.0f} tokens/s = "
      f"{best['tmoe'] / best['pytorch']:.2f}x")
PY

#!/usr/bin/env bash
# Training-step throughput and peak memory of the reference shape (bench_train_step) for each
# precision policy (Fp32, MixedBf16, MixedFp16) and each recompute mode, beside PyTorch in
# the same run (fp32 and bf16 autocast; torch 1.13 has no CPU fp16 autocast), every thread
# setting of both, best vs best. One process per setting, so each peak RSS is its own.
#   bench/run_precision_bench.sh [build dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
"$root/scripts/setup.sh" bench
cmake --build "$build" --target bench_train_step >/dev/null
out=$(mktemp -d)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
for p in fp32 bf16 fp16; do
  for th in 1 2; do
    "$build/bench/bench_train_step" --precision $p --threads $th --steps 7 --warmup 3 | grep '^{' | tee -a "$out/tmoe.jsonl"
  done
done
for r in full selective; do
  "$build/bench/bench_train_step" --precision fp32 --threads 2 --steps 7 --warmup 3 model.recompute=$r | grep '^{' |
    tee -a "$out/tmoe.jsonl"
done
for ac in none bf16; do
  for th in 1 2; do
    for blas in 1 2; do
      OPENBLAS_NUM_THREADS=$blas env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        /usr/bin/python3 "$root/bench/peer_torch.py" --threads $th --steps 7 --warmup 3 --autocast $ac | grep '^{' |
        tee -a "$out/torch.jsonl"
    done
  done
done
/usr/bin/python3 - "$out/tmoe.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
rows = []
for f in sys.argv[1:]:
    rows += [json.loads(l) for l in open(f) if l.startswith("{")]
print()
print("| impl | precision | recompute | threads | BLAS threads | tokens/s | step ms | MFU (own SGEMM peak) | peak RSS MiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['impl']} | {r['precision']} | {r.get('recompute', '-')} | {r['threads']} | {r.get('blas_threads', '-')} | "
          f"{r['tokens_per_s']:.0f} | {r['step_ms']:.0f} | {100*r['mfu']:.1f}% | {r['peak_rss_mib']:.0f} |")
def best(impl, prec):
    xs = [r["tokens_per_s"] for r in rows if r["impl"] == impl and r["precision"] == prec and r.get("recompute", "none") == "none"]
    return max(xs) if xs else float("nan")
print()
t32, tb, th, p32, pb = best("tmoe", "fp32"), best("tmoe", "mixed_bf16"), best("tmoe", "mixed_fp16"), best("pytorch", "fp32"), best("pytorch", "autocast_bf16")
print(f"best vs best, fp32: tmoe {t32:.0f} / PyTorch {p32:.0f} tokens/s = {t32/p32:.2f}x")
print(f"best vs best, bf16: tmoe MixedBf16 {tb:.0f} / PyTorch autocast bf16 {pb:.0f} tokens/s = {tb/pb:.2f}x")
print(f"tmoe MixedFp16 {th:.0f} tokens/s (no PyTorch CPU fp16 autocast to compare)")
PY

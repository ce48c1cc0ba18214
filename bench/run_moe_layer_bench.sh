#!/usr/bin/env bash
# Runs the MoE-layer benchmark (bench_moe_layer) and its PyTorch peer (peer_moe_layer.py)
# side by side and prints the comparison: tokens/s of forward + backward of one MoE layer,
# best thread setting of each side, for 8 experts top-2, 64 fine-grained experts top-8 with 2
# shared, and the series E = 8..128 at constant active parameters (k = E/4, k d_expert = 2048).
#   bench/run_moe_layer_bench.sh [build dir]     (default build/; builds bench_moe_layer)
# Environment: TOKENS (4096), STEPS (5), WARMUP (2), CONFIGS (all), PROFILE=1 adds tmoe's
# split of the step, DEFAULT_MALLOC=0 skips the peer's run with glibc's default malloc,
# TORCH22=1 adds the peer with 2 torch and 2 OpenBLAS threads.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
tokens=${TOKENS:-4096}
steps=${STEPS:-5}
warmup=${WARMUP:-2}
configs=${CONFIGS:-top2,fine64,e16,e32,e64,e128}
py=/usr/bin/python3
cmake --build "$build" --target bench_moe_layer >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# 1. Same function: tmoe's weights, input and gradients against the peer's (512 tokens).
for cfg in ${configs//,/ }; do
  "$build/bench/bench_moe_layer" --tokens 512 --configs "$cfg" --dump "$out/check_" >/dev/null
  $py "$root/bench/peer_moe_layer.py" --check "$out/check_" --configs "$cfg"
  rm -f "$out/check_$cfg.safetensors"
done
# 2. Timings. Both sides run with glibc malloc told to keep freed memory (no mmap per large
# block, no trimming): the peer allocates its (N k, d_model) buffers anew every step and would
# otherwise pay their page faults every step (see peer_moe_layer.py); tmoe keeps its buffers.
keep=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736)
# tmoe with 1 and 2 threads.
prof=()
[ "${PROFILE:-0}" = 1 ] && prof=(--profile)
env "${keep[@]}" "$build/bench/bench_moe_layer" --tokens "$tokens" --steps "$steps" --warmup "$warmup" \
  --configs "$configs" "${prof[@]}" | tee "$out/tmoe.jsonl"
# The peer, without the machine's OPENBLAS_CORETYPE/L2_SIZE overrides (as bench/run_bench.sh):
# torch intra-op threads 1 and 2 with OpenBLAS on 1 thread, and 1 with OpenBLAS on 2. (2 and 2
# puts 4 threads on the 2 cores; in the first full run it was the slowest setting of every
# configuration, 2-3.5x below the best, so it is left out: TORCH22=1 puts it back.)
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "${keep[@]}" OPENBLAS_NUM_THREADS=1 \
  $py "$root/bench/peer_moe_layer.py" --tokens "$tokens" --steps "$steps" --warmup "$warmup" \
  --configs "$configs" --threads 1 2 | tee -a "$out/torch.jsonl"
t2=(1)
[ "${TORCH22:-0}" = 1 ] && t2=(1 2)
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "${keep[@]}" OPENBLAS_NUM_THREADS=2 \
  $py "$root/bench/peer_moe_layer.py" --tokens "$tokens" --steps "$steps" --warmup "$warmup" \
  --configs "$configs" --threads "${t2[@]}" | tee -a "$out/torch.jsonl"
# For reference, the peer with glibc's default malloc (1 torch thread, 1 OpenBLAS thread;
# fewer steps: it is slow).
if [ "${DEFAULT_MALLOC:-1}" = 1 ]; then
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
    $py "$root/bench/peer_moe_layer.py" --tokens "$tokens" --steps 3 --warmup 1 \
    --configs "$configs" --threads 1 | tee -a "$out/torch.jsonl"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
$py - "$out/tmoe.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
rows = []
for f in sys.argv[1:]:
    rows += [json.loads(l) for l in open(f) if l.startswith('{"impl"')]
order = []
for r in rows:
    if r["config"] not in order:
        order.append(r["config"])
def best(impl, cfg, malloc="keep"):
    c = [r for r in rows if r["impl"] == impl and r["config"] == cfg and r.get("malloc", "keep") == malloc]
    return max(c, key=lambda r: r["tokens_per_s"]) if c else None
def label(r):
    s = f"E={r['experts']} top-{r['top_k']} d_expert {r['d_expert']}"
    return s + (f" + {r['shared']} shared x {r['d_shared']}" if r["shared"] else "")
def eigen_peak(cfg, r):
    th = r["threads"] if r["impl"] == "tmoe" else max(r["threads"], int(r["blas_threads"]))
    ts = [x for x in rows if x["impl"] == "tmoe" and x["config"] == cfg]
    return min(ts, key=lambda x: abs(x["threads"] - th))["sgemm_peak_gflops"]
def threads(r):
    return str(r["threads"]) if r["impl"] == "tmoe" else f"{r['threads']}/{r['blas_threads']}"
def impl(r):
    return r["impl"] + (" (default malloc)" if r.get("malloc") == "default" else "")
print()
print("All settings (threads: tmoe threads, or torch intra-op / OpenBLAS threads):")
print()
print("| config | impl | threads | tokens/s | fwd ms | bwd ms | model GFLOP/s | SGEMM peak (own) | MFU vs own peak |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for cfg in order:
    for r in rows:
        if r["config"] == cfg:
            print(f"| {cfg} | {impl(r)} | {threads(r)} | {r['tokens_per_s']:.0f} | {r['fwd_ms']:.0f} | {r['bwd_ms']:.0f} | "
                  f"{r['achieved_gflops']:.1f} | {r['sgemm_peak_gflops']:.1f} | {100 * r['mfu']:.1f}% |")
print()
print("Best against best. MFU = 6 x active weights x tokens/s over the Eigen SGEMM peak (1024^3, one")
print("product per thread) that bench_moe_layer measured next to its run of the same configuration with")
print("as many threads as the side used (for the peer: the larger of its torch and OpenBLAS threads).")
print()
print("| config | active weights | tmoe tokens/s (threads) | PyTorch tokens/s (threads) | tmoe / PyTorch | MFU tmoe | MFU PyTorch | PyTorch, default malloc, 1/1 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for cfg in order:
    t, p, d = best("tmoe", cfg), best("pytorch", cfg), best("pytorch", cfg, "default")
    print(f"| {cfg}: {label(t)} | {t['active_weights'] / 1e6:.2f} M | {t['tokens_per_s']:.0f} ({threads(t)}) | "
          f"{p['tokens_per_s']:.0f} ({threads(p)}) | {t['tokens_per_s'] / p['tokens_per_s']:.2f}x | "
          f"{100 * t['achieved_gflops'] / eigen_peak(cfg, t):.1f}% | {100 * p['achieved_gflops'] / eigen_peak(cfg, p):.1f}% | "
          + (f"{d['tokens_per_s']:.0f} |" if d else "- |"))
series = [c for c in ("top2", "e16", "e32", "e64", "e128") if c in order]
if "top2" in series and len(series) > 1:
    print()
    print("Constant active parameters (k x d_expert = 2048, k = E/4): time per token relative to E = 8.")
    print()
    print("| E | k | d_expert | rows per expert (N k / E) | tmoe tokens/s | tmoe cost | PyTorch tokens/s | PyTorch cost | tmoe / PyTorch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    t0, p0 = best("tmoe", "top2")["tokens_per_s"], best("pytorch", "top2")["tokens_per_s"]
    for cfg in series:
        t, p = best("tmoe", cfg), best("pytorch", cfg)
        print(f"| {t['experts']} | {t['top_k']} | {t['d_expert']} | {t['tokens'] * t['top_k'] // t['experts']} | "
              f"{t['tokens_per_s']:.0f} | {t0 / t['tokens_per_s']:.2f}x | {p['tokens_per_s']:.0f} | "
              f"{p0 / p['tokens_per_s']:.2f}x | {t['tokens_per_s'] / p['tokens_per_s']:.2f}x |")
PY

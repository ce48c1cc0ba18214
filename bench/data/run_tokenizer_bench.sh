#!/usr/bin/env bash
# Runs tmoe's BPE tokenizer benchmark and the SentencePiece peer on the same corpus and
# prints one table: training time, encode throughput (MB/s of input) and bytes per token,
# and the tmoe / SentencePiece throughput ratios. Builds nothing: build bench_tokenizer first
#   cmake --build <build dir> --target bench_tokenizer
#   bench/data/run_tokenizer_bench.sh [build dir] [corpus file or folder] [--reps N]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
corpus=${2:-/usr/share/games/fortunes}
shift $(( $# < 2 ? $# : 2 ))
bin=$build/bench/data/bench_tokenizer
[[ -x $bin ]] || { echo "no $bin: build the bench_tokenizer target first" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"
"$bin" "$corpus" "$@" | tee "$out/tmoe.txt"
echo
/usr/bin/python3 "$root/bench/data/peer_sentencepiece.py" "$corpus" "$@" | tee "$out/spm.txt"
/usr/bin/python3 - "$out/tmoe.txt" "$out/spm.txt" <<'PY'
import json, sys
rows = []
for f in sys.argv[1:]:
    rows += [json.loads(l) for l in open(f) if l.startswith("{")]
def fmt(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"
print()
print("Encode throughput in MB/s of input text. 'whole': one call on the whole corpus (tmoe from "
      "empty chunk caches); 'lines': one call per line (SentencePiece: one call on the list of lines).")
print()
print("| vocab | impl | train s (1 thr / 2 thr) | whole 1 thr | whole 2 thr | lines 1 thr | lines 2 thr | bytes/token (whole) | bytes/token (lines) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for v in sorted({r["vocab"] for r in rows}):
    by = {r["impl"]: r for r in rows if r["vocab"] == v}
    for impl, r in sorted(by.items(), key=lambda kv: kv[0] != "tmoe"):
        print(f"| {v} | {impl} | {fmt(r['train_s_1t'], 2)} / {fmt(r['train_s_2t'], 2)} | {fmt(r['encode_mbs_1t'])} | "
              f"{fmt(r['encode_mbs_2t'])} | {fmt(r['lines_mbs_1t'])} | {fmt(r['lines_mbs_2t'])} | "
              f"{r['bytes_per_token']:.3f} | {r['lines_bytes_per_token']:.3f} |")
    if "tmoe" in by and "sentencepiece" in by:
        t, s = by["tmoe"], by["sentencepiece"]
        ratio = lambda k: t[k] / s[k]
        print(f"| {v} | **tmoe / SentencePiece** | {s['train_s_2t'] / t['train_s_2t']:.1f}x faster | "
              f"{ratio('encode_mbs_1t'):.1f}x | {ratio('encode_mbs_2t'):.1f}x | {ratio('lines_mbs_1t'):.1f}x | "
              f"{ratio('lines_mbs_2t'):.1f}x | | |")
PY

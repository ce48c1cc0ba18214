#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, CUDA, CMake, a compiler and PyTorch (but no
# Eigen, yaml-cpp, MPI or Boost packages, and no network) it builds the CUDA tests and
# benchmarks in Release for sm_90, runs the gpu-labelled tests and the GPU benchmarks, and
# writes logs and a short summary table into OUTDIR. Boost.Test is used header-only from
# the .deb that scripts/gpu_deps.sh fetched into .gpu-deps/ (carry that folder).
#
# usage: scripts/gpu_check.sh OUTDIR          (about 5 minutes on an H200 machine)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
build=${TMOE_GPU_BUILD_DIR:-/tmp/tmoe-gpu-build}
summary=$out/summary.md
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$out/progress.log"; }

# Boost.Test and Eigen headers: the system's, or the carried .debs unpacked into a prefix.
prefix=/tmp/tmoe-deps
for f in "$root"/.gpu-deps/*.deb; do [ -f "$f" ] && dpkg -x "$f" $prefix; done
boost_inc=/usr/include
[ -f $boost_inc/boost/test/included/unit_test.hpp ] || boost_inc=$prefix/usr/include
eigen_dir=""
[ -d $prefix/usr/share/eigen3/cmake ] && eigen_dir=$prefix/usr/share/eigen3/cmake
# NCCL: the toolkit's, or the nvidia-nccl wheel's that PyTorch brings.
nccl_root=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null || true)
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
nvcc --version > "$out/nvcc.txt" 2>&1
stamp "configure (boost $boost_inc, nccl ${nccl_root:-toolkit})"
gen=""
command -v ninja >/dev/null && gen="-G Ninja"
cmake -S "$root" -B "$build" $gen -DTMOE_GPU_ONLY=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DTMOE_BOOST_INCLUDE="$boost_inc" ${eigen_dir:+-DEigen3_DIR=$eigen_dir} ${nccl_root:+-DTMOE_NCCL_ROOT=$nccl_root} > "$out/configure.log" 2>&1
cfg=$?
stamp "build"
build_rc=1
if [ $cfg -eq 0 ]; then
  timeout 300 cmake --build "$build" -j "$(nproc)" > "$out/build.log" 2>&1
  build_rc=$?
fi
stamp "build rc $build_rc; tests"
if [ -d "$build" ]; then
  (cd "$build" && timeout 240 ctest -L gpu --output-on-failure --timeout 120 -j 4 > "$out/tests.log" 2>&1)
fi
test_rc=$?
for t in "$build"/tests/gpu/gpu_test_*; do
  [ -x "$t" ] && timeout 120 "$t" --log_level=message > "$out/$(basename "$t").log" 2>&1
done
stamp "benchmarks"
[ -x "$build/bench/gpu/bench_cuda_ops" ] && timeout 120 "$build/bench/gpu/bench_cuda_ops" > "$out/bench_cuda_ops.jsonl" 2>&1
[ -x "$build/bench/gpu/bench_cuda_train_step" ] && timeout 240 "$build/bench/gpu/bench_cuda_train_step" > "$out/bench_cuda_train_step.jsonl" 2>&1
PYTHONUNBUFFERED=1 timeout 180 python3 "$root/bench/gpu/peer_torch_cuda.py" > "$out/peer_torch_cuda.jsonl" 2>&1
stamp "done"

{
  echo "# tmoe GPU check"
  echo
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- nvcc: $(grep -o 'release [0-9.]*' "$out/nvcc.txt" | head -1); configure rc $cfg; build rc $build_rc; ctest rc $test_rc"
  echo
  echo "| test | result |"
  echo "| --- | --- |"
  grep -E "^ *[0-9]+/[0-9]+ Test +#" "$out/tests.log" 2>/dev/null | sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) \.*[ *]*([A-Za-z*]+[A-Za-z ]*).*/| \1 | \2 |/'
  echo
  echo "## Benchmarks"
  echo '```'
  cat "$out/bench_cuda_ops.jsonl" "$out/bench_cuda_train_step.jsonl" "$out/peer_torch_cuda.jsonl" 2>/dev/null
  echo '```'
} > "$summary"
cat "$summary"

#!/usr/bin/env bash
# Fetches what scripts/gpu_check.sh needs on a GPU machine that has CUDA, CMake, a compiler
# and PyTorch but no Debian development packages and no network: Boost's headers (for
# Boost.Test, used header-only there) and Eigen's (the CPU side of the whole-model parity
# test), as .deb files in .gpu-deps/ (git-ignored). Run it here,
# then carry .gpu-deps with the device call.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.gpu-deps"
cd "$root/.gpu-deps"
for p in libboost1.74-dev libeigen3-dev; do
  [ -n "$(ls ${p}_*.deb 2>/dev/null)" ] || apt-get download $p
done
ls -la "$root/.gpu-deps"

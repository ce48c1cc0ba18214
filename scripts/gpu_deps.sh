#!/usr/bin/env bash
# Fetches what scripts/gpu_check.sh needs on a GPU machine that has CUDA, CMake, a compiler
# and PyTorch but no Debian development packages and no network: Boost's headers (for
# Boost.Test, used header-only there), as a .deb in .gpu-deps/ (git-ignored). Run it here,
# then carry .gpu-deps with the device call.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.gpu-deps"
cd "$root/.gpu-deps"
[ -n "$(ls libboost1.74-dev_*.deb 2>/dev/null)" ] || apt-get download libboost1.74-dev
ls -la "$root/.gpu-deps"

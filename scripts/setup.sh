#!/usr/bin/env bash
# Installs the Debian packages tmoe needs (only those missing), as root.
#   scripts/setup.sh train   build tools, Eigen, yaml-cpp, nlohmann-json, Open MPI, fortunes corpus
#   scripts/setup.sh test    the above + Boost.Test, Debian's PyTorch (parity tests),
#                            scikit-learn and statsmodels (kappa parity), clang + libFuzzer (fuzzing)
#   scripts/setup.sh bench   the above + an optimised BLAS for the PyTorch peer, SentencePiece
set -euo pipefail
what=${1:-train}
pkgs=(cmake g++ make libeigen3-dev libyaml-cpp-dev nlohmann-json3-dev fortunes libopenmpi-dev openmpi-bin)
case "$what" in
  train) ;;
  test) pkgs+=(libboost-test-dev python3-torch python3-numpy python3-sklearn python3-statsmodels clang libclang-rt-14-dev) ;;
  bench) pkgs+=(libboost-test-dev python3-torch python3-numpy libopenblas0-pthread python3-sentencepiece) ;;
  *) echo "setup.sh: unknown target '$what' (expected train, test or bench)" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tmoe setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

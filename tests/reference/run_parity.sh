#!/bin/sh
# run_parity.sh <dump-binary> <python> <test_parity.py> <dir>
# Dumps the C++ side into <dir>, then compares it with the PyTorch reference.
# Fails (never skips) when <python> cannot import torch: torch is a required test dependency.
set -e
if [ "$#" -ne 4 ]; then
  echo "usage: run_parity.sh <dump-binary> <python> <test_parity.py> <dir>" >&2
  exit 2
fi
dump=$1
py=$2
script=$3
dir=$4

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "reference_parity_torch: FAILED: the Python interpreter '$py' cannot 'import torch'." >&2
  echo "  PyTorch is a required test dependency of the parity test (label 'reference')." >&2
  echo "  Re-configure with -DPython3_EXECUTABLE=<a python with torch>, e.g. /usr/bin/python3 on Debian 12" >&2
  echo "  (package python3-torch)." >&2
  exit 1
fi

rm -rf "$dir"
mkdir -p "$dir"
echo "== C++ dump: $dump $dir"
"$dump" "$dir"
echo "== PyTorch comparison: $py $script $dir"
exec "$py" "$script" "$dir"

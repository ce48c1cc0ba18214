#!/usr/bin/env bash
# Quick start 2: installs what is missing, builds everything and runs the whole test suite
# (every CTest label but gpu), then lists the slowest tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" test
build=${TMOE_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=/usr/bin/python3 >/dev/null
start=$(date +%s)
cmake --build "$build" -j "$(nproc)" 2>&1 | grep -E "error|warning: unused|Error" || true
test "${PIPESTATUS[0]}" -eq 0 || { echo "build failed"; cmake --build "$build" -j 1 2>&1 | tail -40; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
cd "$build"
rc=0
ctest --output-on-failure --label-exclude gpu -j "$(nproc)" || rc=$?
echo "slowest tests (s):"
awk 'NF==3 {printf "  %8.2f  %s\n", $3, $1}' Testing/Temporary/CTestCostData.txt 2>/dev/null | sort -rn | head -10
exit $rc

#!/usr/bin/env bash
# Quick start 2: installs what is missing, builds everything and runs the whole test suite
# (every CTest label; the gpu tests skip themselves without a device), then lists the slowest tests. With TMOE_FUZZ_SECONDS=N (CI
# sets 60) it then runs each libFuzzer target for N seconds (scripts/fuzz.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" test
build=${TMOE_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=/usr/bin/python3 \
  -DTMOE_BUILD_TESTS=ON -DTMOE_BUILD_EXAMPLES=ON -DTMOE_BUILD_BENCH=ON >/dev/null
start=$(date +%s)
mkdir -p "$build"
if ! cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1; then
  grep -E "error|Error" "$build/build.log" | head -60
  echo "build failed; full log: $build/build.log"
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
cd "$build"
rc=0
ctest --output-on-failure -j "$(nproc)" || rc=$?
echo "slowest tests (s):"
awk 'NF==3 {printf "  %8.2f  %s\n", $3, $1}' Testing/Temporary/CTestCostData.txt 2>/dev/null | sort -rn | head -10
if [ "$rc" -eq 0 ] && [ "${TMOE_FUZZ_SECONDS:-0}" -gt 0 ]; then
  bash "$root/scripts/fuzz.sh" "$TMOE_FUZZ_SECONDS" || rc=$?
fi
exit $rc

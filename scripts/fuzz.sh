#!/usr/bin/env bash
# Fuzzes tmoe's file and config readers (docs/fuzzing.md): builds every target in
# tests/fuzz/ with clang's libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer into
# build-fuzz/, then runs each for SECONDS (default 60) from the seed corpus and every saved
# regression input. Exits non-zero, naming the reproducer, if a target finds a crash, a
# sanitizer report, an escaping exception, a hang (-timeout) or a runaway allocation.
#
#   scripts/fuzz.sh [SECONDS [TARGET...]]      TARGET: safetensors shard_header config
#   scripts/fuzz.sh 0                          replay the corpus and regressions only
#
# Installs nothing: needs clang++ and the libFuzzer runtime (Debian 12: clang,
# libclang-rt-14-dev). Environment: TMOE_FUZZ_CXX (default clang++), TMOE_FUZZ_BUILD_DIR
# (default build-fuzz), TMOE_FUZZ_MAX_LEN (default 65536).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors shard_header config)
build=${TMOE_FUZZ_BUILD_DIR:-$root/build-fuzz}
cxx=${TMOE_FUZZ_CXX:-clang++}
max_len=${TMOE_FUZZ_MAX_LEN:-65536}
case "$secs" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac
for t in "${targets[@]}"; do
  [ -f "$root/tests/fuzz/fuzz_$t.cpp" ] || { echo "fuzz.sh: no target '$t' (tests/fuzz/fuzz_$t.cpp)" >&2; exit 2; }
done

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz.sh: $cxx not found. Install clang and the libFuzzer runtime first" >&2
  echo "         (Debian 12, as root: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi
mkdir -p "$build/logs"
probe="$build/probe"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$probe.cpp"
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe.cpp" -o "$probe" >"$probe.log" 2>&1; then
  cat "$probe.log" >&2
  echo "fuzz.sh: $cxx cannot link a libFuzzer target: the libFuzzer/sanitizer runtime is missing" >&2
  echo "         (Debian 12, as root: apt-get install libclang-rt-14-dev)" >&2
  exit 2
fi

flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$root/include" -I"$root/tests/fuzz")
for t in "${targets[@]}"; do
  bin="$build/fuzz_$t"
  # Rebuild when the binary is missing or older than a header or a harness source.
  if [ -x "$bin" ] && [ -z "$(find "$root/include" "$root/tests/fuzz" "$0" -newer "$bin" \
        \( -name '*.hpp' -o -name '*.cpp' -o -name 'fuzz.sh' \) -print -quit)" ]; then
    continue
  fi
  libs=()
  [ "$t" = config ] && libs=(-lyaml-cpp)
  echo "fuzz.sh: building fuzz_$t"
  if ! "$cxx" "${flags[@]}" "$root/tests/fuzz/fuzz_$t.cpp" -o "$bin" "${libs[@]}" >"$build/logs/build_$t.log" 2>&1; then
    grep -E "error" "$build/logs/build_$t.log" | head -40 >&2
    echo "fuzz.sh: building fuzz_$t failed; full log: $build/logs/build_$t.log" >&2
    exit 1
  fi
done

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  work="$build/corpus/$t"          # what the fuzzer learns; grows across runs, never committed
  artifacts="$build/artifacts/$t"  # crash-*, timeout-*, oom-*, leak-* reproducers
  mkdir -p "$work" "$artifacts"
  dirs=("$work" "$root/tests/fuzz/corpus/$t")
  [ -d "$root/tests/fuzz/regressions/$t" ] && dirs+=("$root/tests/fuzz/regressions/$t")
  dict=()
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=(-dict="$root/tests/fuzz/$t.dict")
  log="$build/logs/$t.log"
  # -max_total_time=0 would mean no limit: 0 seconds replays the inputs (-runs=0) instead.
  if [ "$secs" -eq 0 ]; then budget=(-runs=0); what="replaying inputs"; else budget=(-max_total_time="$secs"); what="${secs}s"; fi
  echo "fuzz.sh: fuzz_$t, $what (log: $log)"
  rc=0
  "$build/fuzz_$t" "${budget[@]}" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${dict[@]}" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)" "$log" | tail -2 | sed 's/^/  /' || true
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$log" | sed 's/^/  /' || true
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz.sh: fuzz_$t FAILED (exit $rc); end of the log:" >&2
    tail -40 "$log" >&2
    repro=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //' || true)
    if [ -n "$repro" ]; then
      echo "fuzz.sh: reproducer: $repro" >&2
      echo "         replay:  $build/fuzz_$t $repro" >&2
      echo "         keep it: cp $repro $root/tests/fuzz/regressions/$t/" >&2
    fi
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failing targets: ${failed[*]} (artifacts under $build/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: all targets passed"

#!/usr/bin/env bash
# expect_failure.sh SECONDS REGEX COMMAND...: COMMAND (an mpirun job) must end by itself
# within SECONDS with a non-zero exit status, and its output must match REGEX (grep -E).
# A hang (timeout), a zero exit or a missing message fails the test.
set -u
limit=$1 regex=$2
shift 2
start=$(date +%s)
out=$(timeout --signal=KILL "$limit" "$@" 2>&1)
rc=$?
took=$(( $(date +%s) - start ))
echo "$out" | tail -40
echo "exit status $rc after $took s"
if [ "$rc" -eq 0 ]; then echo "FAIL: the job succeeded"; exit 1; fi
if [ "$took" -ge "$limit" ]; then echo "FAIL: the job hung (killed after $limit s)"; exit 1; fi
if ! echo "$out" | grep -Eq "$regex"; then echo "FAIL: no line matches: $regex"; exit 1; fi
echo "PASS"

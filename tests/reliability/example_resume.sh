#!/usr/bin/env bash
# The example trainer under SIGKILL and SIGTERM (CTest: reliability_example_resume).
#   example_resume.sh TRAIN_MOE_LM SHARDS WORKDIR
# 1. A straight run of S steps is the reference.
# 2. The same run killed with SIGKILL at random moments (while training and while saving:
#    a checkpoint every 2 steps), restarted each time until it finishes: its final
#    weights and optimizer state equal the reference byte for byte, and so does the loss
#    it logged for every step.
# 3. SIGTERM: the program writes a checkpoint at the step it was on and exits 0; resuming
#    finishes the run identically.
# 4. A full disk (a 64 KiB file-size limit): the next checkpoint fails with a clear error,
#    exit status 2, and the previous checkpoint stays intact and current.
set -euo pipefail
bin=$1 shards=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
steps=160
tiny=(model.d_model=32 model.n_layers=2 model.n_heads=2 model.n_experts=4 model.d_expert=32 model.context=32
      train.seq_len=32 train.batch_size=4 train.grad_accum=2 train.steps=$steps train.eval_interval=40
      train.log_interval=1 train.eval_batches=1 train.sample_tokens=0 train.threads=1 data.shards=$shards
      checkpoint.interval=2 checkpoint.keep=2)
fail() { echo "FAIL: $*"; exit 1; }
same() {  # same DIR_A DIR_B: final checkpoints identical
  for f in model.safetensors optimizer.safetensors; do
    cmp -s "$1/step-$(printf %08d $steps)/$f" "$2/step-$(printf %08d $steps)/$f" || fail "$f differs between $1 and $2"
  done
}
losses() {  # the last logged "ce" of every step, one "step ce" per line
  python3 -c '
import json, sys
last = {}
for line in open(sys.argv[1]):
    r = json.loads(line); last[r["step"]] = r["ce"]
for s in sorted(last): print(s, repr(last[s]))' "$1"
}

"$bin" "${tiny[@]}" checkpoint.dir="$work/ref" train.metrics_file="$work/ref.jsonl" > "$work/ref.log" 2>&1 ||
  { cat "$work/ref.log"; fail "reference run failed"; }
run_s=$(python3 -c '
import subprocess, sys, time
t = time.monotonic(); subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(round(time.monotonic() - t, 3))' "$bin" "${tiny[@]}" checkpoint.dir="$work/probe")
echo "one uninterrupted run takes $run_s s"

# 2. SIGKILL at random moments until the run completes: each attempt is killed a random
#    0 .. run/15 seconds after it has logged its first step (so every attempt gets somewhere,
#    and a dozen attempts do not finish the run).
kills=0
RANDOM=7  # a fixed sequence of delays
max_delay_ms=$(python3 -c "print(max(2, min(999, int($run_s * 1000 / 15))))")
for attempt in $(seq 1 12); do
  before=$(grep -c "^ *[0-9]\+ " "$work/killed.log" 2>/dev/null || true)
  "$bin" "${tiny[@]}" checkpoint.dir="$work/killed" train.metrics_file="$work/killed.jsonl" >> "$work/killed.log" 2>&1 &
  pid=$!
  for i in $(seq 1 500); do
    [ "$(grep -c "^ *[0-9]\+ " "$work/killed.log" 2>/dev/null || true)" -gt "${before:-0}" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  sleep "$(printf '0.%03d' $(( RANDOM % max_delay_ms )))"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
  else
    wait "$pid" || { tail -20 "$work/killed.log"; fail "run exited with an error"; }
    break
  fi
done
[ -d "$work/killed/step-$(printf %08d $steps)" ] || { "$bin" "${tiny[@]}" checkpoint.dir="$work/killed" \
  train.metrics_file="$work/killed.jsonl" >> "$work/killed.log" 2>&1 || fail "final resume failed"; }
echo "killed $kills times; resumed $(grep -c '^resumed from' "$work/killed.log") times"
[ "$kills" -ge 5 ] || fail "only $kills kills landed: the run is too short to test"
grep -q "^resumed from" "$work/killed.log" || fail "never resumed"
same "$work/ref" "$work/killed"
diff <(losses "$work/ref.jsonl") <(losses "$work/killed.jsonl") > /dev/null || fail "logged losses differ after kills"
if ls -a "$work/killed" | grep -q '\.tmp-'; then echo "(a killed save left a temporary folder; it was ignored)"; fi

# 3. SIGTERM: checkpoint at the current step, exit 0, then resume to the end.
"$bin" "${tiny[@]}" checkpoint.dir="$work/term" train.metrics_file="$work/term.jsonl" > "$work/term.log" 2>&1 &
pid=$!
for i in $(seq 1 200); do grep -q "^ *[0-9]\+ " "$work/term.log" 2>/dev/null && break; sleep 0.02; done
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] || { cat "$work/term.log"; fail "SIGTERM exit status $status, expected 0"; }
if grep -q "SIGTERM received after step" "$work/term.log"; then
  grep -q "checkpoint .* (stop signal)" "$work/term.log" || fail "no checkpoint written on SIGTERM"
  grep "SIGTERM received" "$work/term.log"
else
  echo "(the run finished before SIGTERM arrived)"
fi
"$bin" "${tiny[@]}" checkpoint.dir="$work/term" train.metrics_file="$work/term.jsonl" >> "$work/term.log" 2>&1 ||
  fail "resume after SIGTERM failed"
same "$work/ref" "$work/term"
diff <(losses "$work/ref.jsonl") <(losses "$work/term.jsonl") > /dev/null || fail "logged losses differ after SIGTERM"

# 4. Full disk: continue the reference run by 2 steps under `ulimit -f 64`.
cp -r "$work/ref" "$work/full"
status=0
(ulimit -f 64; exec "$bin" "${tiny[@]}" train.steps=$((steps + 2)) checkpoint.dir="$work/full" \
   checkpoint.interval=1 > "$work/full.log" 2>&1) || status=$?
[ "$status" -eq 2 ] || { cat "$work/full.log"; fail "full disk: exit status $status, expected 2"; }
grep -q "file too large" "$work/full.log" || { cat "$work/full.log"; fail "full disk: no clear error"; }
grep "file too large" "$work/full.log"
[ "$(cat "$work/full/latest")" = "step-$(printf %08d $steps)" ] || fail "full disk: latest moved"
same "$work/ref" "$work/full"
if ls -a "$work/full" | grep -q '\.tmp-'; then fail "full disk: a temporary folder was left behind"; fi
echo "PASS: SIGKILL x $kills and SIGTERM both resume bitwise identically; a full disk leaves the last checkpoint intact"

#!/usr/bin/env bash
# Two scheduled runs of the shipped pipeline spec (data/demo/pipeline.yaml), on CPU:
#   day 1: 32 seed prompts land -> augment, generate, train the demo student, eval, gate, promote
#   day 2: 32 more land -> only they (and their synthetic prompts) go to the teacher; the student
#          continues from day 1's champion on both days' corpora, is gated against it, promoted or not
# then `distill pipeline status` prints both runs and plots their scores. What `make demo-pipeline` runs.
set -euo pipefail

SPEC=${SPEC:-data/demo/pipeline.yaml}
ROOT=${ROOT:-runs/demo-pipeline}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false

rm -rf "$ROOT"
mkdir -p "$ROOT/incoming"
run() { printf '$ %s\n' "$*"; set +e; "$@"; code=$?; set -e; echo "exit $code"; }

head -n 32 data/demo/seeds.jsonl > "$ROOT/incoming/day1.jsonl"
printf '\n== day 1 (%ss)\n' "$SECONDS"
run distill pipeline run "$SPEC" --scheduled-time 2026-12-01T02:00:00Z
[ "$code" -eq 0 ] || [ "$code" -eq 3 ] || exit "$code"

tail -n 32 data/demo/seeds.jsonl > "$ROOT/incoming/day2.jsonl"
printf '\n== day 2 (%ss)\n' "$SECONDS"
run distill pipeline run "$SPEC" --scheduled-time 2026-12-02T02:00:00Z
[ "$code" -eq 0 ] || [ "$code" -eq 3 ] || exit "$code"

printf '\n== day 2 again: the scheduler retries a finished run (%ss)\n' "$SECONDS"
run distill pipeline run "$SPEC" --scheduled-time 2026-12-02T02:00:00Z

printf '\n== status (%ss)\n' "$SECONDS"
distill pipeline status "$SPEC"

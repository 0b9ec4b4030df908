#!/usr/bin/env bash
# The whole pipeline on the shipped demo teacher, on CPU, in plain CLI calls you can copy:
#   64 labelled seeds -> teacher writes 4,000 more prompts and answers them (top-k log-probs)
#   -> a 2-layer student learns from that corpus (KD + SFT) -> eval against the teacher and
#   against the same student trained on the 64 labelled seeds alone.
# Everything lands under $RUN (default runs/demo); the report is $RUN/eval/report.{md,json}.
# Exit status: 0 when every step ran (the gate's verdict is printed), else the failing step's.
#
#   scripts/demo.sh                    # what `make demo` runs (and `distill demo`, e.g. in the image)
#   RUN=runs/demo-s1 SEED=1 scripts/demo.sh
#   KD=0 scripts/demo.sh               # the student on SFT alone (KD = --kd-weight, default 0.2)
#   AUGMENT=16 STEPS=4 LIMIT=8 scripts/demo.sh   # a smoke run (seconds): LIMIT = first N suite prompts
set -euo pipefail

RUN=${RUN:-runs/demo}
SEED=${SEED:-0}
TEACHER=${TEACHER:-demo}
DATA=${DATA:-data}        # the shipped data folder (distill demo points it into the installed package)
AUGMENT=${AUGMENT:-4000}  # synthetic prompts; sizes and step counts tried: bench/demo.md, bench/student_recipe.md
STEPS=${STEPS:-2000}
KD=${KD:-0.2}
THREADS=${OMP_NUM_THREADS:-2}
export OMP_NUM_THREADS=$THREADS
export TOKENIZERS_PARALLELISM=false

step() { printf '\n== %s  (%ss elapsed)\n' "$1" "$SECONDS"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1/4  teacher: 64 seeds -> $AUGMENT synthetic prompts -> greedy responses with top-20 log-probs"
# New prompts are sampled (diversity); answers are greedy (a task with one right answer): the
# stored top-20 log-probs are the teacher's full temperature-1 distribution either way.
run distill generate --teacher "$TEACHER" --prompts "$DATA/demo/seeds.jsonl" --out "$RUN/corpus" \
    --augment "$AUGMENT" --augment-config "$DATA/demo/augment.yaml" --decontaminate demo --seed "$SEED" \
    --temperature 0 --top-k 20 --max-new-tokens 64 --batch-size 256 --no-progress

# Steps 2 and 3 run side by side, one CPU thread each (tiny models gain little from a second
# thread, so two 1-thread jobs finish well before two 2-thread jobs in a row).
step "2/4  baseline, in the background: the 64 seeds with their labelled answers -> the same student recipe and step budget, SFT alone (log: $RUN/baseline.log)"
export OMP_NUM_THREADS=1
(
    run distill generate --teacher "$TEACHER" --prompts "$DATA/demo/seeds.jsonl" --out "$RUN/seeds_corpus" \
        --responses reference --top-k 20 --max-new-tokens 64 --seed "$SEED" --no-progress
    run distill train --student demo --corpus "$RUN/seeds_corpus" --out "$RUN/seeds_only" \
        --kd-weight 0 --max-steps "$STEPS" --seed "$SEED"
) > "$RUN/baseline.log" 2>&1 &
baseline=$!

step "3/4  student: KD + SFT on the teacher's corpus (KD weight $KD)"
# KD weight 0.2 rather than the CLI's 0.5: on this task the lower weight scored higher in every
# paired run, with a third of the seed-to-seed spread (bench/student_ceiling.md).
run distill train --student demo --corpus "$RUN/corpus" --out "$RUN/student" \
    --kd-weight "$KD" --max-steps "$STEPS" --seed "$SEED"
if ! wait "$baseline"; then
    tail -n 20 "$RUN/baseline.log"
    echo "the baseline failed (above; full log: $RUN/baseline.log)" >&2
    exit 1
fi
tail -n 1 "$RUN/baseline.log"
export OMP_NUM_THREADS=$THREADS

step "4/4  eval: teacher vs student vs seeds-only on the held-out demo suite"
# Speed: 8 suite prompts at batch 1 and in a full batch of 64, 3 rounds with the models taking
# turns (median); the default 16 prompts cost ~12 s more of the 5-minute budget.
set +e
run distill eval --model teacher="$TEACHER" --model student="$RUN/student" --model seeds_only="$RUN/seeds_only" \
    --suite demo --teacher teacher --out "$RUN/eval" --max-new-tokens 64 --batch-size 64 --speed-prompts 8 ${LIMIT:+--limit "$LIMIT"} \
    --gate "student.score >= 0.95 * teacher.score"
gate=$?
set -e
printf '\ndemo finished in %ss; report: %s/eval/report.md\n' "$SECONDS" "$RUN"
# Exit 3 is the gate saying the student fell short (shown above): the demo itself still ran.
if [ "$gate" -eq 3 ]; then exit 0; fi
exit $gate

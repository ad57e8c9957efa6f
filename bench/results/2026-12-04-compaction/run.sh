#!/bin/bash
# The before/after of README.md here, alternated run by run on one machine:
#   bash bench/results/2026-12-04-compaction/run.sh OUTDIR BEFORE_TREE AFTER_TREE [ROUNDS]
# BEFORE_TREE: a `git archive` of 0fbe6d0; AFTER_TREE: one of the commit that set
# `secure_delete = FAST` (its runs are `fast-*` here; d0d75a8 alone made `final-*`).
set -u
OUT=${1:?output directory}; BEFORE=${2:?before tree}; AFTER=${3:?after tree}; ROUNDS=${4:-3}
mkdir -p "$OUT"
PY=${PY:-/work/main/.venv/bin/python}
for r in $(seq 1 "$ROUNDS"); do
  for t in before after; do
    tree=$BEFORE; [ $t = after ] && tree=$AFTER
    (cd "$tree/bench" && PYTHONPATH="$tree/src:$tree/bench" $PY -m pnyxbench --systems pnyx3 \
        --clients 256 --duration 8 --warmup 1 --rounds 1 --no-ceiling --no-probe \
        --json "$OUT/fast-$t-$r.json") > "$OUT/fast-$t-$r.txt" 2>&1
    grep -E '^pnyx3 ' "$OUT/fast-$t-$r.txt"
  done
done
# What holds each node up (the tracer is the after tree's; it traces the tree it sits in).
cp "$AFTER/bench/trace_write.py" "$BEFORE/bench/trace_write.py"
for t in before after; do
  tree=$BEFORE; [ $t = after ] && tree=$AFTER
  $PY "$tree/bench/trace_write.py" --clients 256 --duration 6 --stalls 5 --probe-steps 0 \
      --last 200 > "$OUT/stalls-$t.txt" 2>&1
done

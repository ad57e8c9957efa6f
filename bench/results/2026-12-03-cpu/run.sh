#!/bin/bash
# The sitting behind README.md here: the code before this round of work (BEFORE, a
# `git archive` of 3cdb62d) and after it (AFTER, a `git archive` of the last commit),
# alternated run by run on the same machine, with the venv of /work/main:
#   bash bench/results/2026-12-03-cpu/run.sh OUTDIR BEFORE_TREE AFTER_TREE
set -u
OUT=${1:?output directory}; BEFORE=${2:?before tree}; AFTER=${3:?after tree}
mkdir -p "$OUT"
PY=${PY:-/work/main/.venv/bin/python}
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/sitting.log"; }
bench() {  # TREE NAME ARGS...: pnyx bench from TREE's code, into OUT/NAME.{txt,json}
  local tree=$1 name=$2; shift 2
  (cd "$tree/bench" && PYTHONPATH="$tree/src:$tree/bench" $PY -m pnyxbench "$@" \
      --json "$OUT/$name.json") > "$OUT/$name.txt" 2>&1
}

for round in 1 2; do
  log "round $round: closed loop, the issue's table (PySyncObj with the after tree's runner)"
  bench "$BEFORE" "closed-before-$round" --systems pnyx3,pnyx1-direct --clients 1,256,1024 \
      --duration 5 --warmup 1 --rounds 1 --no-ceiling
  bench "$AFTER" "closed-after-$round" \
      --systems pnyx3,pnyx1-direct,pysyncobj3,pysyncobj3-nobatch --clients 1,256,1024 \
      --duration 5 --warmup 1 --rounds 1 --no-ceiling
  log "round $round: 1 client, what bounds the latency (1 node; 3 nodes without fsync)"
  for t in before after; do
    tree=$BEFORE; [ $t = after ] && tree=$AFTER
    bench "$tree" "latency1-$t-$round" --systems pnyx3,pnyx1,pnyx3-nofsync --clients 1 \
        --duration 5 --warmup 1 --rounds 1 --no-ceiling
  done
  log "round $round: in-process CPU per committed write"
  $PY bench/bench_path.py --tree "$BEFORE/src" --tree "$AFTER/src" --rounds 1 \
      --writes 100000 --warmup 20000 >> "$OUT/path.txt" 2>&1
  log "round $round: linearizable reads, clients on every member"
  for t in before after; do
    tree=$BEFORE; [ $t = after ] && tree=$AFTER
    bench "$tree" "reads-$t-$round" --systems pnyx3 --clients 256 --read-ratio 0,1 \
        --target all --duration 5 --warmup 1 --rounds 1 --no-ceiling --no-probe
  done
  log "round $round: HTTP with wrk"
  for t in before after; do
    tree=$BEFORE; [ $t = after ] && tree=$AFTER
    (cd "$tree" && PYTHONPATH="$tree/src:$tree/bench" $PY bench/http_wrk.py --duration 6 \
        --rounds 1 --json "$OUT/http-$t-$round.json") > "$OUT/http-$t-$round.txt" 2>&1
  done
done
log "open loop: max-rate search and 2x overload, alternated"
for round in 1 2; do
  bench "$BEFORE" "open-before-$round" --open-loop --systems pnyx3 --rate-start 8000 \
      --duration 5 --warmup 1 --rounds 1 --overload 2
  bench "$AFTER" "open-after-$round" --open-loop --systems pnyx3,pysyncobj3 \
      --rate-start 8000 --duration 5 --warmup 1 --rounds 1 --overload 2
done
log "done"

#!/bin/bash
# The sitting behind README.md here: the code at the start of this round (BEFORE, a
# `git archive` of 4b8bc95) and after it (AFTER, a `git archive` of the last commit),
# alternated run by run on the same machine, with the venv of /work/main:
#   bash bench/results/2026-12-04-reads/run.sh OUTDIR BEFORE_TREE AFTER_TREE
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
  for t in before after; do
    tree=$BEFORE; [ $t = after ] && tree=$AFTER
    log "round $round $t: closed loop writes, 1 and 256 clients"
    bench "$tree" "closed-$t-$round" --systems pnyx3,pnyx1-direct --clients 1,256 \
        --duration 5 --warmup 1 --rounds 1 --no-ceiling
    log "round $round $t: 1 client, what bounds the latency (1 node; 3 nodes without fsync)"
    bench "$tree" "latency1-$t-$round" --systems pnyx3,pnyx1,pnyx3-nofsync --clients 1 \
        --duration 5 --warmup 1 --rounds 1 --no-ceiling
    log "round $round $t: linearizable reads and writes, 256 clients on every member"
    bench "$tree" "reads-$t-$round" --systems pnyx3 --clients 256 --read-ratio 0,1 \
        --target all --duration 5 --warmup 1 --rounds 1 --no-ceiling --no-probe
  done
  log "round $round: in-process CPU per committed write, and per linearizable read"
  $PY bench/bench_path.py --tree "$BEFORE/src" --tree "$AFTER/src" --rounds 1 \
      --writes 100000 --warmup 20000 >> "$OUT/path.txt" 2>&1
  $PY bench/bench_path.py --tree "$BEFORE/src" --tree "$AFTER/src" --rounds 1 --reads \
      --writes 100000 --warmup 20000 >> "$OUT/path-reads.txt" 2>&1
  $PY bench/bench_path.py --tree "$BEFORE/src" --tree "$AFTER/src" --rounds 1 --clients 1 \
      --writes 5000 --warmup 1000 >> "$OUT/path-1client.txt" 2>&1
done
log "done"

#!/bin/bash
# The sitting behind README.md here: before (a08ee55) and after (the commit named below)
# alternated, three rounds; each `pnyx bench` run measures writes (read ratio 0) and
# reads (ratio 1) of one fresh 3-node cluster (fsync on), 256 closed-loop clients,
# binary protocol, two alternating rounds of 5 s each.
#   bash bench/results/2026-12-03-reads/run.sh OUTDIR BEFORE_COMMIT AFTER_COMMIT
set -u
OUT=${1:?output directory}; BEFORE=${2:-a08ee55}; AFTER=${3:-HEAD}
PY=${PY:-/work/main/.venv/bin/python}
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
mkdir -p "$OUT"
for c in "$BEFORE" "$AFTER"; do
  rm -rf "$OUT/tree-$c" && mkdir -p "$OUT/tree-$c"
  git -C "$REPO" archive "$c" | tar -x -C "$OUT/tree-$c"
done
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/sitting.log"; }
run() {  # TREE LABEL TARGET MODE
  local tree=$OUT/tree-$1
  (cd "$tree/bench" && PYTHONPATH="$tree/src:$tree/bench" $PY -m pnyxbench --systems pnyx3 \
      --clients 256 --read-ratio 0,1 --read-mode "$4" --target "$3" --duration 5 --warmup 1 \
      --rounds 2 --no-ceiling --no-probe --json "$OUT/$2.json") > "$OUT/$2.txt" 2>&1
  grep -E "^pnyx3 " "$OUT/$2.txt" | sed "s/^/$2  /" | tee -a "$OUT/sitting.log"
}
for round in 1 2 3; do
  for target in leader all; do
    for mode in linearizable quorum; do
      log "round $round, clients -> $target, $mode reads"
      run "$BEFORE" "before-$mode-$target-$round" "$target" "$mode"
      run "$AFTER" "after-$mode-$target-$round" "$target" "$mode"
    done
  done
done
log "stale reads (no read index: the client path alone), after only"
for round in 1 2; do run "$AFTER" "after-stale-leader-$round" leader stale; done
log done

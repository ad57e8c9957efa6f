#!/bin/bash
# The sitting behind README.md here, from a checkout with its venv:
#   bash bench/results/2026-12-04-lease/run.sh OUTDIR
# Linearizable reads without and with leader leases (pnyx3, pnyx3-lease: --read-lease
# 150 ms of the default 300 ms election timeout), writes in the same setting (256
# clients spread over every member), alternated round by round; then quorum reads
# beside them, and the 1,024-client point.
set -u
OUT=${1:?output directory}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/sitting.log"; }
bench() {  # NAME ARGS...
  local name=$1; shift
  (cd "$ROOT/bench" && PYTHONPATH="$ROOT/src:$ROOT/bench" $PY -m pnyxbench "$@" \
      --json "$OUT/$name.json") > "$OUT/$name.txt" 2>&1
}
log "linearizable reads and writes, 256 clients on every member, 3 rounds alternated"
bench reads-256 --systems pnyx3,pnyx3-lease --clients 256 --read-ratio 0,1 --target all \
    --duration 5 --warmup 1 --rounds 3 --no-ceiling --no-probe
log "quorum reads beside them"
bench quorum-256 --systems pnyx3,pnyx3-lease --clients 256 --read-ratio 1 --read-mode quorum \
    --target all --duration 5 --warmup 1 --rounds 2 --no-ceiling --no-probe
log "linearizable reads at the leader only, 256 clients"
bench leader-256 --systems pnyx3,pnyx3-lease --clients 256 --read-ratio 1 --target leader \
    --duration 5 --warmup 1 --rounds 2 --no-ceiling --no-probe
log "done"

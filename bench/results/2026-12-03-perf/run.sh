#!/bin/bash
# The sitting behind README.md here: every command, in the order run, alternating the
# systems and the HTTP servers. Run from a checkout (or a `git archive` of one) with
# the venv of /work/main: PNYX=. bash bench/results/2026-12-03-perf/run.sh OUTDIR
set -u
OUT=${1:?output directory}
mkdir -p "$OUT"
PY=${PY:-/work/main/.venv/bin/python}
cd "$(dirname "$0")/../../.."
export PYTHONPATH="$PWD/src:$PWD/bench"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/sitting.log"; }

for round in 1 2; do
  log "HTTP round $round: h1"
  $PY bench/http_wrk.py --server h1 --duration 8 --rounds 1 --json "$OUT/http-h1-$round.json" \
      2>&1 | tee -a "$OUT/http.txt"
  log "HTTP round $round: aiohttp"
  $PY bench/http_wrk.py --server aiohttp --duration 8 --rounds 1 \
      --json "$OUT/http-aiohttp-$round.json" 2>&1 | tee -a "$OUT/http.txt"
done
log "HTTP, 32 connections"
$PY bench/http_wrk.py --server h1 --connections 32 --duration 8 --rounds 1 \
    --json "$OUT/http-h1-32.json" 2>&1 | tee -a "$OUT/http.txt"
$PY bench/http_wrk.py --server aiohttp --connections 32 --duration 8 --rounds 1 \
    --json "$OUT/http-aiohttp-32.json" 2>&1 | tee -a "$OUT/http.txt"

log "closed loop: the issue's table"
(cd bench && $PY -m pnyxbench --systems pnyx3,pnyx1-direct,pysyncobj3,pysyncobj3-nobatch \
    --clients 1,256,1024 --duration 5 --warmup 1 --rounds 2 --no-probe \
    --json "$OUT/closed.json") > "$OUT/closed.txt" 2>&1

log "open loop: max-rate search and 2x overload"
(cd bench && $PY -m pnyxbench --open-loop \
    --systems pnyx3,pysyncobj3,pysyncobj3-nobatch,pnyx1-direct,trivial \
    --rate-start 4000 --duration 5 --warmup 1 --rounds 2 --overload 2 \
    --json "$OUT/open.json") > "$OUT/open.txt" 2>&1
log "done"

# Added after the sitting, same code and machine (16:48): 2x the higher of the two rounds'
# pnyx3 max-rate (19,027/s), against 19,000/s itself, alternated over two rounds:
#   (cd bench && pnyx bench --open-loop --systems pnyx3,pysyncobj3 --rate 19000,38000 \
#       --duration 5 --warmup 1 --rounds 2 --json overload-38k.json)
# And the HTTP server alone (direct_cpu.sh beside this), alternated three times:
#   for i in 1 2 3; do bash direct_cpu.sh h1; bash direct_cpu.sh aiohttp; done
# The HTTP stacks alone (17:14), alternated three times:
#   .venv/bin/python bench/http_stacks.py --rounds 3

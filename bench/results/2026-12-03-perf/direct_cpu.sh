#!/bin/bash
# The HTTP server alone: one `pnyx serve --no-consensus` with HTTP, wrk PUTs (64 connections),
# and the server's CPU per request from /proc. Usage: direct_cpu.sh h1|aiohttp [connections]
cd "$(dirname "$0")/../../.."
PORT=$((20000 + RANDOM % 20000))
export PNYX_HTTP_SERVER=$1
${PY:-.venv/bin/python} -m pnyx.cli serve --id 1 --cluster 1=127.0.0.1:$((PORT+1)) --data-dir /tmp/dw-$PORT --no-consensus --http 127.0.0.1:$PORT > /tmp/dw.log 2>&1 &
PID=$!
sleep 2
t0=$(awk '{print $14+$15}' /proc/$PID/stat)
OUT=$(wrk -t1 -c${2:-64} -d6s -s bench/wrk_put.lua http://127.0.0.1:$PORT)
t1=$(awk '{print $14+$15}' /proc/$PID/stat)
REQ=$(echo "$OUT" | grep -oP "(\d+) requests in" | grep -oP "^\d+")
RATE=$(echo "$OUT" | grep -oP "Requests/sec:\s+\K[\d.]+")
echo "$1: $RATE req/s, server CPU $(( (t1-t0) )) ticks over 6 s, $(python3 -c "print(round(($t1-$t0)/100/$REQ*1e6,1))") us/request"
kill -INT $PID; wait $PID
rm -rf /tmp/dw-$PORT

#!/bin/sh
# Every partition shape, cut both ways, two workloads: what README.md here reports.
# Usage (root; from the checkout): bench/results/2026-12-03-partitions/run.sh LABEL [SRC]
# LABEL names the output directory (before, after); SRC a source tree to run instead of
# this checkout's (PYTHONPATH=SRC/src), e.g. an exported older commit.
set -u
label=$1
here=$(cd "$(dirname "$0")" && pwd)
out="$here/$label"
mkdir -p "$out"
if [ $# -ge 2 ]; then export PYTHONPATH="$2/src"; fi
py="$here/../../../.venv/bin/python"
for balance in "" "--balance"; do
  for cut in blackhole loss; do
    for nemesis in minority leader-alone bridge flapping; do
      name="$nemesis-$cut${balance:+-balanced}"
      "$py" -m pnyx.cli chaos --nemesis "$nemesis" --cut "$cut" $balance --time 20 \
        --fault 3 --calm 2 --seed 1 --quiet --json "$out/$name.json" > "$out/$name.txt" 2>&1
      echo "$name: exit $?"
    done
  done
done

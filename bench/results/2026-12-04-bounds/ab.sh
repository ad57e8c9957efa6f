#!/bin/bash
# usage: ab2.sh ROUNDS OUTPREFIX TREE_A TREE_B -- bench args ; alternates
rounds=$1; out=$2; A=$3; B=$4; shift 5
for r in $(seq 1 $rounds); do
  for tree in $A $B; do
    name=$(basename $tree)
    (cd $tree/bench && PYTHONPATH=$tree/src:$tree/bench /work/main/.venv/bin/python -m pnyxbench "$@" --json /tmp/${out}_${name}_$r.json > /tmp/${out}_${name}_$r.txt 2>&1)
    echo "== $name round $r: $(grep -E '^pnyx' /tmp/${out}_${name}_$r.txt | head -3)"
  done
done

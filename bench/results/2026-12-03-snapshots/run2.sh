#!/bin/sh
# After run.sh, in the same sitting: an empty replica brought back with 1,000,000 keys,
# then a second before/after pair of the 1M run (alternation).
set -x
OUT=bench/results/2026-12-03-snapshots
B=/work/before/.venv/bin/python
A=/work/main/.venv/bin/python
$A bench/snapshot_sitting.py --python $A --label rejoin-1mkeys --fill-keys 1000000 --writes 20000 --rejoin --max-seconds 600 --json $OUT/rejoin-1mkeys.json
$A bench/snapshot_sitting.py --python $B --label before-2 --writes 100000,1000000 --restart --json $OUT/before-1m-2.json
$A bench/snapshot_sitting.py --python $A --label after-2 --writes 100000,1000000 --restart --json $OUT/after-1m-2.json

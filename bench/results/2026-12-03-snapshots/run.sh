#!/bin/sh
# The sitting's commands, in order (from /work/main; /work/before is `git worktree add
# /work/before 63ed340` with its own venv). Sequential: 2 CPUs, one cluster at a time.
set -x
OUT=bench/results/2026-12-03-snapshots
B=/work/before/.venv/bin/python
A=/work/main/.venv/bin/python
# 1-2: memory, disk, restart after 100k and 1M writes (10,000 keys, 100 B), old vs new (defaults)
$A bench/snapshot_sitting.py --python $B --label before --writes 100000,1000000 --restart --json $OUT/before-1m.json
$A bench/snapshot_sitting.py --python $A --label after --writes 100000,1000000 --restart --rejoin --json $OUT/after-1m.json
# 3: throughput, snapshots on (defaults) vs off, alternating, 200k writes each
for r in 1 2; do
  $A bench/snapshot_sitting.py --python $A --label on-$r --writes 200000 --json $OUT/tput-on-$r.json
  $A bench/snapshot_sitting.py --python $A --label off-$r --writes 200000 --json $OUT/tput-off-$r.json -- --snapshot-every 0 --snapshot-every-bytes 0
done

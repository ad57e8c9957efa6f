"""Sweep the simulated store with configuration changes under every fault.

Each seed is `pnyx.sim.cluster_config.change_sweep(seed)`: the default sweep (3 and 5
nodes, loss, duplication, partitions, crashes aimed at the leader, late messages and
aimed reboots, snapshots, a wiped disk every third seed) plus 2-5 membership
operations (add, remove, replace, two adds at once, the leader crashed or old and new
members partitioned mid-change). Prints every failing seed with its first violation
and a summary; exit status 1 if any seed failed.

    .venv/bin/python bench/sweep_changes.py 0 1999            # the correct replica
    .venv/bin/python bench/sweep_changes.py 0 99 --mutant config-immediate
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter

from pnyx.sim.cluster import simulate_cluster
from pnyx.sim.cluster_config import change_sweep


def one(job: tuple[int, str | None]) -> tuple[int, str | None, float, dict[str, int], bool]:
    logging.disable(logging.ERROR)
    seed, mutant = job
    try:
        result = simulate_cluster(change_sweep(seed, mutant))
    except Exception as e:  # the simulator itself broke: a failure of the seed too
        return seed, f"the run raised {type(e).__name__}: {e}", 0.0, {}, False
    first = str(result.violations[0]) if result.violations else None
    return seed, first, result.end_time, result.changes, result.workload_end is not None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", type=int)
    p.add_argument("last", type=int)
    p.add_argument("--mutant")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    started = time.perf_counter()
    failed = 0
    unfinished = 0
    totals: Counter[str] = Counter()
    jobs = [(seed, args.mutant) for seed in range(args.first, args.last + 1)]
    with multiprocessing.Pool(args.jobs) as pool:
        for done, (seed, first, _end, changes, finished) in enumerate(
                pool.imap_unordered(one, jobs), 1):
            totals.update(changes)
            if not finished:
                unfinished += 1
                print(f"seed {seed}: safe, but the workload did not finish", flush=True)
            if first is not None:
                failed += 1
                print(f"seed {seed}: {first}", flush=True)
            if done % 100 == 0:
                print(f"  {done}/{len(jobs)} seeds, {failed} failed, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
    n = len(jobs)
    print(f"{n} seeds, {failed} failed, {unfinished} workloads unfinished, "
          f"{time.perf_counter() - started:.0f} s")
    print("changes: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

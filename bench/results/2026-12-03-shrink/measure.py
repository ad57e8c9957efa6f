"""Shrink the first failing seed (of the default sweep, within 100) of every Multi-Paxos
mutant and print a Markdown table: the run's size before and after, and the time taken.

    .venv/bin/python bench/results/2026-12-03-shrink/measure.py [--runs N] [--seconds S]
"""

from __future__ import annotations

import argparse
import logging
import time

from pnyx.sim.cluster import simulate_cluster
from pnyx.sim.cluster_config import sweep
from pnyx.sim.mutants import CLUSTER_MUTANTS
from pnyx.sim.shrink import shrink


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    logging.getLogger("pnyx.node").setLevel(logging.ERROR)
    print("| mutant | seed | rule | events before → after | faults before → after "
          "| operations (invoked) before → after | nodes | clients | runs | shrink s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mutant in CLUSTER_MUTANTS:
        seed = next((s for s in range(100) if not simulate_cluster(sweep(s, mutant)).safe),
                    None)
        if seed is None:
            print(f"| {mutant} | none in 0..99 | | | | | | | | |")
            continue
        started = time.perf_counter()
        r = shrink(sweep(seed, mutant), max_runs=args.runs, max_seconds=args.seconds)
        assert r is not None
        wall = time.perf_counter() - started
        b, a = r.before, r.after
        print(f"| {mutant} | {seed} | {r.rule.split()[0]} | {b.events} → {a.events} "
              f"| {b.faults} → {a.faults} | {b.ops} ({b.invoked}) → {a.ops} ({a.invoked}) "
              f"| {b.nodes} → {a.nodes} | {b.clients} → {a.clients} | {r.runs}"
              f"{' (budget)' if r.exhausted else ''} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Simulator benchmark: message deliveries per wall-clock second, and time to decision.

Run by hand (not a test):  .venv/bin/python bench/bench_sim.py [--seeds 1000]

1. Speed: the standard faulty mix (5 nodes, 3 proposers, 20% loss, 5%
   duplication, partitions, crashes) over many seeds; simulated message
   deliveries divided by wall-clock time, with and without the JSON trace.
2. Time to decision: simulated time until a value is chosen, over the seeds,
   with 20% message loss (no other faults, then with all faults): median, p90,
   p99, max.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pnyx.sim import SimConfig, simulate
from pnyx.sim.faults import FaultConfig
from pnyx.sim.network import NetworkConfig
from pnyx.sim.report import percentile


def config(seed: int, faults: bool, drop: float = 0.2) -> SimConfig:
    return SimConfig(
        seed=seed,
        nodes=5,
        proposers=3,
        network=NetworkConfig(drop=drop, duplicate=0.05 if faults else 0.0),
        faults=FaultConfig(partitions=faults, crashes=faults),
    )


def speed(seeds: int, trace: bool) -> tuple[float, int]:
    delivered = 0
    started = time.perf_counter()
    for seed in range(seeds):
        delivered += simulate(config(seed, True), trace=trace).delivered
    wall = time.perf_counter() - started
    return delivered / wall, delivered


def decision_times(seeds: int, faults: bool) -> list[float]:
    times = []
    for seed in range(seeds):
        result = simulate(config(seed, faults))
        assert result.safe, (seed, result.violations)
        assert result.chosen_at is not None, f"seed {seed} undecided"
        times.append(result.chosen_at)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    args = parser.parse_args()

    for trace in (False, True):
        rate, delivered = speed(args.seeds, trace)
        print(f"speed ({'with' if trace else 'no'} trace): {rate:,.0f} deliveries/s "
              f"({delivered:,} deliveries over {args.seeds} seeds)")
    for faults in (False, True):
        times = decision_times(args.seeds, faults)
        label = "20% loss" + (" + dup, partitions, crashes" if faults else "")
        print(
            f"time to decision, {label}, {args.seeds} seeds: "
            f"median {statistics.median(times) * 1000:.1f} ms, "
            f"p90 {percentile(times, 90) * 1000:.1f} ms, "
            f"p99 {percentile(times, 99) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()

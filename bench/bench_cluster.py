"""Replicated-store simulation benchmarks: batching, failover, and simulator speed.

Run by hand (not a test):  .venv/bin/python bench/bench_cluster.py [--seeds 200]

1. Batching: the same closed-loop load (32 clients, no think time, 2,000
   operations, no faults) with batching on (up to 256 commands per slot) and
   off (one per slot), for pipelining windows 1 and 32: commands chosen per
   simulated second, and the ratio.
2. Failover: leader crashes only (every crash hits the leader), heartbeat
   20 ms, election timeout 100-200 ms with pre-vote: simulated time from the
   leader's crash to the next chosen slot, median and p99 over the seeds.
3. Speed: wall-clock seconds per simulated run of 200 operations with all
   faults on (3 replicas).
"""

from __future__ import annotations

import argparse
import statistics
import time

from pnyx.sim.cluster import ClusterConfig, simulate_cluster
from pnyx.sim.faults import FaultConfig
from pnyx.sim.network import NetworkConfig
from pnyx.sim.report import percentile


def batching() -> None:
    for window in (1, 32):
        rates = {}
        for max_batch in (256, 1):
            config = ClusterConfig(seed=1, clients=32, ops=2000, think=0.0, window=window,
                                   max_batch=max_batch, reads=("linearizable",))
            r = simulate_cluster(config)
            assert r.safe and r.workload_end, r.violations
            rates[max_batch] = r.commands / r.workload_end
            print(f"  window {window:>2}, max batch {max_batch:>3}: "
                  f"{rates[max_batch]:>9,.0f} commands/simulated s, "
                  f"{r.commands / r.slots:5.1f} commands/slot")
        print(f"  window {window:>2}: batching on / off = {rates[256] / rates[1]:.1f}x")


def failover(seeds: int) -> None:
    times: list[float] = []
    for seed in range(seeds):
        config = ClusterConfig(
            seed=seed,
            faults=FaultConfig(crashes=True, until=3.0, crash_rate=2.0, max_outage=0.3),
            leader_crashes=1.0,
        )
        r = simulate_cluster(config)
        assert r.safe, (seed, r.violations)
        times.extend(r.failovers)
    print(f"  {len(times)} leader crashes over {seeds} seeds: "
          f"median {statistics.median(times) * 1000:.0f} ms, "
          f"p90 {percentile(times, 90) * 1000:.0f} ms, "
          f"p99 {percentile(times, 99) * 1000:.0f} ms "
          f"(heartbeat 20 ms, election timeout 100-200 ms, pre-vote on)")


def speed(seeds: int) -> None:
    started = time.perf_counter()
    ops = 0
    for seed in range(seeds):
        config = ClusterConfig(
            seed=seed, network=NetworkConfig(drop=0.1, duplicate=0.05),
            faults=FaultConfig(partitions=True, crashes=True, until=3.0, partition_rate=2.0,
                               crash_rate=3.0, max_outage=0.3),
        )
        r = simulate_cluster(config)
        assert r.safe, (seed, r.violations)
        ops += r.completed
    wall = time.perf_counter() - started
    print(f"  {seeds} runs, {ops:,} client ops, all faults: {wall / seeds * 1000:.0f} ms per run "
          f"(including the linearizability check)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    args = parser.parse_args()
    print("batching:")
    batching()
    print("failover:")
    failover(args.seeds)
    print("speed:")
    speed(args.seeds)


if __name__ == "__main__":
    main()

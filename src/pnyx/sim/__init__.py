"""A deterministic simulator for the pure protocol core.

One process, a virtual clock, a seeded network that delays, drops,
duplicates and reorders, partitions that come and heal, and crashes that lose
whatever was not yet durable. One seed reproduces one run exactly. Every run
is checked against the safety invariants in `pnyx.sim.invariants`: `Observer`
for single-decree runs, `LogObserver` for the wire rules of Multi-Paxos (the
replicated store of `pnyx.sim.cluster` feeds it every message).
"""

from pnyx.sim.invariants import LogObserver, Observer, Violation
from pnyx.sim.simulation import SimConfig, SimResult, Simulation, simulate

__all__ = [
    "LogObserver", "Observer", "SimConfig", "SimResult", "Simulation", "Violation", "simulate",
]

"""A deterministic simulator for the pure protocol core.

One process, a virtual clock, a seeded network that delays, drops,
duplicates and reorders, partitions that come and heal, and crashes that lose
whatever was not yet durable. One seed reproduces one run exactly. Every run
is checked against the safety invariants in `pnyx.sim.invariants`.
"""

from pnyx.sim.invariants import Observer, Violation
from pnyx.sim.simulation import SimConfig, SimResult, Simulation, simulate

__all__ = ["Observer", "SimConfig", "SimResult", "Simulation", "Violation", "simulate"]

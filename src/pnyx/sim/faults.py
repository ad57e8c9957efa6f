"""Fault schedules: when partitions come and heal, when processes crash and restart.

A schedule is drawn from its own seeded RNG before the run starts, so the
faults of a seed do not depend on how the protocol behaves. Every fault ends
by `until`: after that the network is whole and every process is up, which
is when liveness can be expected of the protocol.

A "reboot" crashes a process and brings it straight back from its durable
state, mid-ballot. Its node is only a fallback: the engine aims a reboot at
whoever leads the run at that moment (`Engine.leader`), and the engine may
hold it until that process next sends a Prepare or an Accept
(`Engine.reboot_on_send`; the cluster aims every other one at the next
Prepare from anyone, a candidate mid-election), so what it loses is exactly
what was not yet durable when its ballot went out.

A "wipe" crashes a process and erases its disk (log and snapshots): it comes
back empty at its "restart", a replica that lost its disk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fault:
    time: float
    kind: str  # "partition", "heal", "crash", "restart", "reboot", "wipe"
    nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FaultConfig:
    partitions: bool = False
    crashes: bool = False
    # Faults are dense while a decision is being made (tens of milliseconds).
    until: float = 0.25  # faults happen in [0, until) seconds of virtual time
    partition_rate: float = 15.0  # partitions per second, on average
    crash_rate: float = 30.0  # crashes per second, on average
    max_outage: float = 0.1  # longest partition or downtime, seconds
    reboots: bool = False  # crash-and-restart at once, aimed at the leader
    reboot_rate: float = 20.0  # reboots per second, on average
    script: tuple[Fault, ...] = ()  # faults at set times, added to the random ones
    # Processes that lose their disk entirely (crash, and restart empty after an outage).
    wipes: int = 0


def schedule(nodes: list[int], config: FaultConfig, rng: random.Random) -> list[Fault]:
    faults: list[Fault] = list(config.script)
    if config.partitions:
        t = rng.expovariate(config.partition_rate)
        while t < config.until:
            size = rng.randint(1, len(nodes) - 1) if len(nodes) > 1 else 0
            minority = tuple(sorted(rng.sample(nodes, size)))
            end = min(config.until, t + rng.uniform(0.01, config.max_outage))
            faults += [Fault(t, "partition", minority), Fault(end, "heal", ())]
            t = end + rng.expovariate(config.partition_rate)
    if config.crashes:
        t = rng.expovariate(config.crash_rate)
        while t < config.until:
            node = rng.choice(nodes)
            end = min(config.until, t + rng.uniform(0.001, config.max_outage))
            faults += [Fault(t, "crash", (node,)), Fault(end, "restart", (node,))]
            t += rng.expovariate(config.crash_rate)
    if config.reboots:
        # Drawn last, so turning reboots on leaves the other faults of a seed as they were.
        t = rng.expovariate(config.reboot_rate)
        while t < config.until:
            faults.append(Fault(t, "reboot", (rng.choice(nodes),)))
            t += rng.expovariate(config.reboot_rate)
    if config.wipes:
        # Drawn after the others, so adding wipes leaves the other faults of a seed as
        # they were.
        for _ in range(config.wipes):
            t = rng.uniform(0, config.until)
            node = rng.choice(nodes)
            end = min(config.until, t + rng.uniform(0.001, config.max_outage))
            faults += [Fault(t, "wipe", (node,)), Fault(end, "restart", (node,))]
    faults.sort(key=lambda f: f.time)
    return faults

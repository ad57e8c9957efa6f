"""The simulated network: per-link delay, loss, duplication, reordering, partitions.

Each directed link gets its own base delay when the network is built; every
message then adds a random jitter on top, so messages on one link can arrive
out of order. A message may be dropped or delivered twice. A small share of messages may
be held back (`late`): delivered only after `late_min`..`late_max` seconds,
far beyond any jitter, so a Prepare, Accept or heartbeat of a ballot long
superseded arrives after newer leaders have come and gone. A partition splits
the nodes into two sides; a message is lost if, when it arrives, its sender
and receiver are on different sides. A process's messages to itself are
never lost or duplicated. All randomness comes from the seeded `rng`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    min_delay: float = 0.001
    max_delay: float = 0.005
    jitter: float = 0.003
    drop: float = 0.0
    duplicate: float = 0.0
    # Held back and delivered late: the share of messages, and how late (seconds).
    late: float = 0.0
    late_min: float = 0.2
    late_max: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        if self.jitter < 0:
            raise ValueError("jitter must be >= 0")
        if not 0 <= self.late_min <= self.late_max:
            raise ValueError("need 0 <= late_min <= late_max")
        for name in ("drop", "duplicate", "late"):
            p = getattr(self, name)
            if not 0 <= p < 1:
                raise ValueError(f"{name} probability must be in [0, 1), got {p}")


SELF_DELAY = 1e-6


class Network:
    def __init__(self, nodes: list[int], config: NetworkConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self._base = {
            (a, b): rng.uniform(config.min_delay, config.max_delay)
            for a in nodes
            for b in nodes
            if a != b
        }
        self._side = dict.fromkeys(nodes, 0)
        self.partitioned = False
        self.held_back = 0  # messages delivered late

    def add_node(self, node: int, rng: random.Random) -> None:
        """A process joins the run (a membership change): its links get their base
        delays from `rng` (not the message RNG, so the rest of the run draws as it
        would), and it starts on the side of the majority."""
        cfg = self.config
        for other in list(self._side):
            self._base[(node, other)] = rng.uniform(cfg.min_delay, cfg.max_delay)
            self._base[(other, node)] = rng.uniform(cfg.min_delay, cfg.max_delay)
        self._side[node] = 0

    def delays(self, src: int, dst: int) -> list[float]:
        """Arrival delays of the copies of one message: none if lost, two if duplicated."""
        if src == dst:
            return [SELF_DELAY]
        rng = self.rng
        cfg = self.config
        if cfg.drop and rng.random() < cfg.drop:
            return []
        base = self._base[(src, dst)]
        first = self._late(base + rng.random() * cfg.jitter)
        if cfg.duplicate and rng.random() < cfg.duplicate:
            return [first, self._late(base + rng.random() * cfg.jitter)]
        return [first]

    def _late(self, delay: float) -> float:
        # Draws nothing unless `late` is set, so older configurations replay as before.
        cfg = self.config
        if cfg.late and self.rng.random() < cfg.late:
            self.held_back += 1
            return delay + self.rng.uniform(cfg.late_min, cfg.late_max)
        return delay

    def connected(self, src: int, dst: int) -> bool:
        return self._side[src] == self._side[dst]

    def partition(self, minority: set[int]) -> None:
        for node in self._side:
            self._side[node] = 1 if node in minority else 0
        self.partitioned = True

    def heal(self) -> None:
        for node in self._side:
            self._side[node] = 0
        self.partitioned = False

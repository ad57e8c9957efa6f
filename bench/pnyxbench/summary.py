"""What a run measured, summarised per system and point: throughput and latency percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pnyxbench.measure import Measurement


@dataclass
class Summary:
    """A system at a point, over every round: pooled latencies, total ops over total time."""

    system: str
    kind: str
    nodes: int
    clients: int
    value_size: int
    read_ratio: float
    probe: bool
    rounds: int
    throughput: float
    round_throughputs: list[float]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: int
    first_error: str
    unanswered: int
    loadgen_cpu: float
    leader_cpu: float | None
    servers_cpu: float | None
    rss_mib: dict[str, float] = field(default_factory=dict)
    commands: int | None = None

    @property
    def spread(self) -> float:
        """(max − min) / mean of the per-round throughputs."""
        t = self.round_throughputs
        mean = sum(t) / len(t) if t else 0.0
        return (max(t) - min(t)) / mean if len(t) > 1 and mean > 0 else 0.0


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def summarize(measurements: list[Measurement],
              memory: dict[str, dict[str, float]],
              commands: dict[str, int]) -> list[Summary]:
    groups: dict[tuple[Any, ...], list[Measurement]] = {}
    for m in measurements:
        key = (m.system, m.clients, m.value_size, m.read_ratio, m.probe)
        groups.setdefault(key, []).append(m)
    out = []
    for ms in groups.values():
        first = ms[0]
        pooled = sorted(x for m in ms for x in m.latencies)
        seconds = sum(m.seconds for m in ms)
        leader_cpu = [m.server_cpu.get(str(m.leader)) for m in ms]
        all_cpu = [sum(m.server_cpu.values()) for m in ms if m.server_cpu]
        out.append(Summary(
            system=first.system, kind=first.kind, nodes=first.nodes, clients=first.clients,
            value_size=first.value_size, read_ratio=first.read_ratio, probe=first.probe,
            rounds=len(ms), throughput=sum(m.ops for m in ms) / seconds,
            round_throughputs=[round(m.throughput, 1) for m in ms],
            p50_ms=percentile(pooled, 50) * 1e3, p90_ms=percentile(pooled, 90) * 1e3,
            p99_ms=percentile(pooled, 99) * 1e3, max_ms=(pooled[-1] if pooled else 0) * 1e3,
            mean_ms=(sum(pooled) / len(pooled) * 1e3) if pooled else 0.0,
            errors=sum(m.errors for m in ms),
            first_error=next((m.first_error for m in ms if m.first_error), ""),
            unanswered=sum(m.unanswered for m in ms),
            loadgen_cpu=sum(m.loadgen_cpu for m in ms) / len(ms),
            leader_cpu=(sum(c for c in leader_cpu if c is not None) / len(leader_cpu)
                        if all(c is not None for c in leader_cpu) and leader_cpu else None),
            servers_cpu=sum(all_cpu) / len(all_cpu) if all_cpu else None,
            rss_mib=memory.get(first.system, {}), commands=commands.get(first.system),
        ))
    return out


def size_text(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"

"""The simulation loop: virtual time, simulated processes, disks and network.

Each simulated process is a `SynodNode` from the pure core with a simulated
disk. The loop keeps one queue of timed events (deliveries, timer wake-ups,
writes becoming durable, proposals, faults) and hands each to the core,
then carries out the `Ready` the core returns: the record goes to disk and
becomes durable after the fsync delay, unless the process crashes first; the
messages go to the network. A crash throws away the process and everything
not yet durable; a restart builds a new process from what its disk holds.

Everything random is drawn from RNGs seeded from `SimConfig.seed`, and ties in
time are broken by insertion order, so a seed replays one run exactly.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import IO

from pnyx.protocol.messages import Message, Value
from pnyx.protocol.proposer import RetryPolicy
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod import DurableState, Ready, SynodConfig, SynodNode
from pnyx.sim.faults import Fault, FaultConfig, schedule
from pnyx.sim.invariants import Observer, Violation
from pnyx.sim.mutants import MUTANTS
from pnyx.sim.network import Network, NetworkConfig
from pnyx.sim.trace import Trace, describe


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int = 0
    nodes: int = 5
    proposers: int = 3
    network: NetworkConfig = field(default_factory=NetworkConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    phase1: int | None = None  # quorum sizes; majorities when None
    phase2: int | None = None
    distinguished: int | None = None  # the distinguished proposer, if any
    fsync: float = 0.0005  # seconds for a record to become durable
    propose_within: float = 0.01  # proposers start at random times in [0, this)
    max_time: float = 30.0  # give up on liveness after this much virtual time
    mutant: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 64:
            raise ValueError(f"nodes must be in 1..64, got {self.nodes}")
        if not 1 <= self.proposers <= self.nodes:
            raise ValueError(f"proposers must be in 1..{self.nodes}, got {self.proposers}")
        if self.distinguished is not None and not 1 <= self.distinguished <= self.nodes:
            raise ValueError(f"distinguished proposer must be a node in 1..{self.nodes}")
        if self.mutant is not None and self.mutant not in MUTANTS:
            raise ValueError(f"unknown mutant {self.mutant!r}; known: {', '.join(MUTANTS)}")
        if self.fsync < 0 or self.max_time <= 0:
            raise ValueError("fsync must be >= 0 and max_time > 0")

    def quorums(self) -> QuorumSystem:
        ids = range(1, self.nodes + 1)
        if self.phase1 is None and self.phase2 is None:
            return QuorumSystem.majority(ids)
        majority = self.nodes // 2 + 1
        return QuorumSystem.flexible(ids, self.phase1 or majority, self.phase2 or majority)


@dataclass(slots=True)
class SimResult:
    config: SimConfig
    proposals: dict[int, Value]  # node -> the value its client asked it to propose
    chosen: Value | None
    chosen_at: float | None  # when a quorum first accepted it (virtual seconds)
    learned: dict[int, Value]
    all_learned_at: float | None  # when every process knew the chosen value
    end_time: float
    sent: int
    delivered: int
    lost: int
    duplicated: int
    faults: list[Fault]
    violations: list[Violation]
    events: int
    trace_digest: str | None

    @property
    def safe(self) -> bool:
        return not self.violations

    @property
    def decided(self) -> bool:
        return self.chosen is not None


# Event kinds; the queue holds (time, seq, kind, node, payload, incarnation).
_DELIVER, _WAKE, _DURABLE, _PROPOSE, _FAULT = range(5)


class Simulation:
    def __init__(self, config: SimConfig, trace_sink: IO[bytes] | None = None,
                 trace: bool = False) -> None:
        self.config = config
        seed = config.seed
        self.ids = list(range(1, config.nodes + 1))
        quorums = config.quorums()
        self.synod = SynodConfig(
            tuple(self.ids), quorums, config.retry, distinguished=config.distinguished
        )
        self.node_class = MUTANTS[config.mutant] if config.mutant else SynodNode
        self.network = Network(self.ids, config.network, random.Random(f"{seed}/network"))
        self.observer = Observer(quorums)
        self.trace = Trace(trace_sink) if (trace or trace_sink is not None) else None
        self.now = 0.0
        self.nodes: dict[int, SynodNode | None] = {}
        self.disks: dict[int, DurableState] = dict.fromkeys(self.ids, DurableState())
        self.incarnation = dict.fromkeys(self.ids, 0)
        self._disk_free_at = dict.fromkeys(self.ids, 0.0)
        self._wake_at: dict[int, float | None] = dict.fromkeys(self.ids)
        self._queue: list[tuple[float, int, int, int, object, int]] = []
        self._seq = 0
        self.values = {i: f"v{i}".encode() for i in self.ids[: config.proposers]}
        self._unproposed: set[int] = set()
        self.sent = self.delivered = self.lost = self.duplicated = self.events = 0
        self.all_learned_at: float | None = None
        workload = random.Random(f"{seed}/workload")
        self.faults = schedule(self.ids, config.faults, random.Random(f"{seed}/faults"))
        for i in self.ids:
            self.nodes[i] = self._make_node(i)
        for i in self.values:
            self._push(workload.uniform(0, config.propose_within), _PROPOSE, i, None, 0)
        for fault in self.faults:
            self._push(fault.time, _FAULT, 0, fault, 0)

    # ---------------------------------------------------------------- driver

    def run(self) -> SimResult:
        queue = self._queue
        max_time = self.config.max_time
        observer = self.observer
        while queue and not observer.violations:
            time, _, kind, node, payload, incarnation = heapq.heappop(queue)
            if time > max_time:
                break
            self.now = time
            self.events += 1
            if kind == _DELIVER:
                self._deliver(node, payload)  # type: ignore[arg-type]
            elif kind == _WAKE:
                self._wake(node, time)
            elif kind == _DURABLE:
                self._durable(node, payload, incarnation)  # type: ignore[arg-type]
            elif kind == _PROPOSE:
                self._propose(node)
            else:
                self._fault(payload)  # type: ignore[arg-type]
            if self.all_learned_at is None and self._everyone_learned():
                self.all_learned_at = time
                break
        return self._result()

    def _push(self, time: float, kind: int, node: int, payload: object, incarnation: int) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, kind, node, payload, incarnation))

    def _make_node(self, i: int) -> SynodNode:
        rng = random.Random(f"{self.config.seed}/node{i}/{self.incarnation[i]}")
        return self.node_class(i, self.synod, rng, self.disks[i])

    def _apply(self, i: int, ready: Ready) -> None:
        """Carry out the effects the core asked for."""
        now = self.now
        if ready.persist is not None:
            # One disk per process: writes complete in order, one fsync after another.
            done = max(now, self._disk_free_at[i]) + self.config.fsync
            self._disk_free_at[i] = done
            payload = (ready.persist_seq, ready.persist)
            self._push(done, _DURABLE, i, payload, self.incarnation[i])
        for dst, message in ready.send:
            self._send(i, dst, message)
        if ready.learned is not None:
            if self.trace:
                self.trace.emit(now, "learn", node=i, value=ready.learned.decode())
            self.observer.on_learned(i, ready.learned, now)
        wake = ready.wake_at
        if wake is not None and wake != self._wake_at[i]:
            self._wake_at[i] = wake
            self._push(max(wake, now), _WAKE, i, None, self.incarnation[i])

    def _send(self, src: int, dst: int, message: Message) -> None:
        self.sent += 1
        observer = self.observer
        chosen_before = len(observer.chosen)
        observer.on_send(src, message, self.now)
        if self.trace:
            self.trace.emit(self.now, "send", dst=dst, msg=describe(message))
            if len(observer.chosen) > chosen_before:
                self.trace.emit(self.now, "chosen", value=message.value.decode())  # type: ignore[union-attr]
        delays = self.network.delays(src, dst)
        if not delays:
            self.lost += 1
            if self.trace:
                self.trace.emit(self.now, "drop", src=src, dst=dst)
        elif len(delays) > 1:
            self.duplicated += 1
        for delay in delays:
            self._push(self.now + delay, _DELIVER, dst, (src, message), 0)

    def _deliver(self, dst: int, payload: tuple[int, Message]) -> None:
        src, message = payload
        node = self.nodes[dst]
        if node is None or not self.network.connected(src, dst):
            self.lost += 1
            if self.trace:
                why = "down" if node is None else "partitioned"
                self.trace.emit(self.now, "lost", src=src, dst=dst, why=why)
            return
        self.delivered += 1
        if self.trace:
            self.trace.emit(self.now, "deliver", dst=dst, msg=describe(message))
        self._apply(dst, node.step(message, self.now))

    def _wake(self, i: int, time: float) -> None:
        node = self.nodes[i]
        if node is None or self._wake_at[i] != time:
            return  # a stale wake-up: the process crashed or asked for another time
        self._wake_at[i] = None
        self._apply(i, node.tick(time))

    def _durable(self, i: int, payload: tuple[int, DurableState], incarnation: int) -> None:
        node = self.nodes[i]
        if node is None or incarnation != self.incarnation[i]:
            return  # the process crashed before this write reached the disk
        seq, state = payload
        self.disks[i] = state
        if self.trace:
            self.trace.emit(self.now, "durable", node=i, seq=seq)
        self._apply(i, node.persisted(seq))

    def _propose(self, i: int) -> None:
        node = self.nodes[i]
        if node is None:
            self._unproposed.add(i)  # the client retries when the process is back
            return
        value = self.values[i]
        self.observer.on_propose(i, value, self.now)
        if self.trace:
            self.trace.emit(self.now, "propose", node=i, value=value.decode())
        self._apply(i, node.propose(value, self.now))

    def _fault(self, fault: Fault) -> None:
        if self.trace:
            self.trace.emit(self.now, fault.kind, nodes=list(fault.nodes))
        if fault.kind == "partition":
            self.network.partition(set(fault.nodes))
        elif fault.kind == "heal":
            self.network.heal()
        elif fault.kind == "crash":
            (i,) = fault.nodes
            if self.nodes[i] is not None:
                self.nodes[i] = None
                self.incarnation[i] += 1
                self._wake_at[i] = None
                self._disk_free_at[i] = self.now
        elif fault.kind == "restart":
            (i,) = fault.nodes
            if self.nodes[i] is None:
                self.observer.on_restart(i, self.disks[i], self.now)
                node = self.nodes[i] = self._make_node(i)
                # A client whose value was not yet learned asks again.
                if i in self.values and node.chosen is None:
                    self._unproposed.add(i)
                if i in self._unproposed:
                    self._unproposed.discard(i)
                    self._propose(i)
                else:
                    self._apply(i, node.tick(self.now))

    def _everyone_learned(self) -> bool:
        learned = self.observer.learned
        return len(learned) == len(self.ids) and all(self.nodes.values())

    def _result(self) -> SimResult:
        chosen = self.observer.decided_value
        return SimResult(
            config=self.config,
            proposals=dict(self.values),
            chosen=chosen,
            chosen_at=self.observer.chosen.get(chosen) if chosen is not None else None,
            learned=dict(self.observer.learned),
            all_learned_at=self.all_learned_at,
            end_time=self.now,
            sent=self.sent,
            delivered=self.delivered,
            lost=self.lost,
            duplicated=self.duplicated,
            faults=self.faults,
            violations=list(self.observer.violations),
            events=self.events,
            trace_digest=self.trace.digest() if self.trace else None,
        )


def simulate(config: SimConfig, trace_sink: IO[bytes] | None = None,
             trace: bool = False) -> SimResult:
    """Run one simulation to the end and return what happened."""
    return Simulation(config, trace_sink, trace).run()

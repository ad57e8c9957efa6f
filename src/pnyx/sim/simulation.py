"""Single-decree Paxos in the simulator: competing proposers, one value chosen.

Each simulated process is a `SynodNode` from the pure core, run by the
`pnyx.sim.engine` under the configured faults. Clients ask the first
`proposers` processes to propose distinct values (and ask again after a
crash); the `Observer` checks the safety invariants on everything that
happens. The run ends when every process has learned the chosen value (and,
with `linger`, that much longer, so messages held back still land), when an
invariant breaks, or at `max_time`.

A reboot fault (`FaultConfig.reboots`) is aimed at the most active proposer:
the distinguished one if there is one, else the proposer in the highest
ballot still being fought for. With `reboot_on_send` it waits until that
process next sends a Prepare or an Accept and reboots it right then, before
anything it recorded with that send is durable: mid-ballot, where a process
that sends ahead of its disk loses what it told the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import IO

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.messages import Accept, Message, Prepare, Value
from pnyx.protocol.synod.node import DurableState, Ready, SynodConfig, SynodNode
from pnyx.protocol.synod.proposer import Phase, RetryPolicy
from pnyx.sim.engine import CALL, Engine
from pnyx.sim.faults import Fault, FaultConfig
from pnyx.sim.invariants import Observer, Violation
from pnyx.sim.mutants import MUTANTS
from pnyx.sim.network import NetworkConfig

_IN_PLAY = (Phase.PREPARING, Phase.ACCEPTING, Phase.BACKING_OFF)


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
    linger: float = 0.0  # keep running this long after everyone learned (late messages)
    reboot_on_send: bool = True  # a reboot waits for its target's next Prepare or Accept
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
        if self.fsync < 0 or self.max_time <= 0 or self.linger < 0:
            raise ValueError("fsync and linger must be >= 0 and max_time > 0")

    def phase2_size(self) -> int:
        """The phase-2 quorum size, worked out apart from `QuorumSystem` for the observer."""
        return self.phase2 if self.phase2 is not None else self.nodes // 2 + 1

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
    held_back: int = 0  # messages the network delivered late
    reboots: int = 0  # processes crashed and restarted at once

    @property
    def safe(self) -> bool:
        return not self.violations

    @property
    def decided(self) -> bool:
        return self.chosen is not None


class Simulation(Engine[SynodNode, DurableState]):
    """Single-decree Paxos: proposers race to get their value chosen."""

    def __init__(self, config: SimConfig, trace_sink: IO[bytes] | None = None,
                 trace: bool = False) -> None:
        super().__init__(config.seed, config.nodes, config.network, config.faults,
                         config.fsync, config.max_time, trace_sink, trace)
        self.config = config
        quorums = config.quorums()
        self.synod = SynodConfig(
            tuple(self.ids), quorums, config.retry, distinguished=config.distinguished
        )
        self.node_class = MUTANTS[config.mutant] if config.mutant else SynodNode
        self.observer = Observer(self.ids, config.phase2_size())
        self._armed: int | None = None  # a reboot waiting for this process's next send
        self.reboots = 0
        self.values = {i: f"v{i}".encode() for i in self.ids[: config.proposers]}
        self._unproposed: set[int] = set()
        self.all_learned_at: float | None = None
        self.start()
        workload = random.Random(f"{config.seed}/workload")
        for i in self.values:
            self.push(workload.uniform(0, config.propose_within), CALL, i, None)

    def empty_disk(self) -> DurableState:
        return DurableState()

    def write(self, disk: DurableState, records: DurableState) -> DurableState:
        return records  # a record is the whole state

    def make_process(self, i: int, rng: random.Random) -> SynodNode:
        return self.node_class(i, self.synod, rng, self.disks[i])

    def after(self, i: int, ready: Ready) -> None:
        if ready.learned is not None:
            if self.trace:
                self.trace.emit(self.now, "learn", node=i, value=ready.learned.decode())
            self.observer.on_learned(i, ready.learned, self.now)

    def on_send(self, src: int, message: Message) -> None:
        chosen_before = len(self.observer.chosen)
        self.observer.on_send(src, message, self.now)
        if self.trace and len(self.observer.chosen) > chosen_before:
            self.trace.emit(self.now, "chosen", value=message.value.decode())  # type: ignore[union-attr]
        if src == self._armed and isinstance(message, Prepare | Accept):
            # After the rest of this batch leaves, before its records are durable.
            self._armed = None
            self.push(self.now, CALL, src, "reboot")

    def leader(self) -> int | None:
        """The distinguished proposer, else the one in the highest ballot still in play."""
        if self.config.distinguished is not None:
            return self.config.distinguished
        best: tuple[Ballot, int] | None = None
        for i, node in self.nodes.items():
            if node is None:
                continue
            proposer = node.proposer
            if proposer.phase in _IN_PLAY and (best is None or proposer.ballot > best[0]):
                best = (proposer.ballot, i)
        return best[1] if best is not None else None

    def reboot(self, i: int) -> None:
        target = self.leader()
        target = target if target is not None else i
        if self.config.reboot_on_send:
            self._armed = target
        else:
            self._reboot_now(target)

    def _reboot_now(self, i: int) -> None:
        if self.nodes[i] is None:
            return
        self.reboots += 1
        if self.trace:
            self.trace.emit(self.now, "rebooted", node=i)
        self.crash(i)
        self.restart(i)

    def call(self, i: int, payload: object) -> None:
        """A client asks process `i` to propose its value (or an armed reboot fires)."""
        if payload == "reboot":
            self._reboot_now(i)
            return
        node = self.nodes[i]
        if node is None:
            self._unproposed.add(i)  # the client retries when the process is back
            return
        value = self.values[i]
        self.observer.on_propose(i, value, self.now)
        if self.trace:
            self.trace.emit(self.now, "propose", node=i, value=value.decode())
        self.apply(i, node.propose(value, self.now))

    def on_restart(self, i: int) -> None:
        self.observer.on_restart(i, self.disks[i], self.now)
        node = self.nodes[i]
        assert node is not None
        # A client whose value was not yet learned asks again.
        if i in self.values and node.chosen is None:
            self._unproposed.add(i)
        if i in self._unproposed:
            self._unproposed.discard(i)
            self.call(i, None)
        else:
            self.apply(i, node.tick(self.now))

    def done(self) -> bool:
        if self.observer.violations:
            return True
        if self.all_learned_at is None and self._everyone_learned():
            self.all_learned_at = self.now
        if self.all_learned_at is None:
            return False
        return self.now >= self.all_learned_at + self.config.linger

    def _everyone_learned(self) -> bool:
        learned = self.observer.learned
        return len(learned) == len(self.ids) and all(self.nodes.values())

    def result(self) -> SimResult:
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
            held_back=self.network.held_back,
            reboots=self.reboots,
        )


def simulate(config: SimConfig, trace_sink: IO[bytes] | None = None,
             trace: bool = False) -> SimResult:
    """Run one simulation to the end and return what happened."""
    sim = Simulation(config, trace_sink, trace)
    sim.run()
    return sim.result()

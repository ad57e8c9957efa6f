"""The hand-driven harness for scenario tests of the pure `Replica`: a tiny network
(`Net`), a state machine that remembers what it applied (`Memo`), and filters that
pick which in-flight messages a step delivers or drops. Test files import it from
here; no test file imports another."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable
from types import SimpleNamespace

from pnyx.protocol.multipaxos import LogReady, Outcome, ReadMode, Replica, ReplicaConfig
from pnyx.protocol.multipaxos.effects import (
    BeginStaging,
    InstallSnapshot,
    KeepSnapshots,
    SendChunk,
    SnapshotOp,
    StageChunk,
    TakeSnapshot,
)
from pnyx.protocol.multipaxos.messages import (
    Accept,
    Accepted,
    Batch,
    Command,
    LogMessage,
    SnapshotChunk,
)
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable

MEMBERS = (1, 2, 3)  # the default cluster: three replicas
# Picks in-flight messages by destination and message (its `src` is the sender).
Filter = Callable[[int, LogMessage], bool]


class Memo:
    """A small deterministic state machine: `b"k=v"` sets k, `query(b"k")` reads it.

    It remembers every `(index, command)` it applied, so a test can see the
    order and that nothing was applied twice."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[tuple[int, bytes]] = []

    def apply(self, command: bytes, index: int) -> bytes:
        self.log.append((index, command))
        key, _, value = command.partition(b"=")
        self.data[key] = value
        return b"applied " + command

    def query(self, query: bytes) -> bytes:
        return self.data.get(query, b"-")

    def snapshot(self) -> bytes:
        return b"\n".join(b"%s=%s" % kv for kv in sorted(self.data.items()))

    def restore(self, data: bytes) -> None:
        self.data = dict(line.partition(b"=")[::2] for line in data.split(b"\n") if line)


# ------------------------------------------------------------------ filters


def everything(dst: int, m: LogMessage) -> bool:
    return True


def of_type(*kinds: type, dst: int | None = None, src: int | None = None) -> Filter:
    return lambda d, m: (
        isinstance(m, kinds) and (dst is None or d == dst) and (src is None or m.src == src)
    )


def between(*ids: int) -> Filter:
    """Messages whose sender and receiver are both among `ids`."""
    return lambda d, m: d in ids and m.src in ids


def touching(node: int) -> Filter:
    """Messages to or from `node` (to cut it off)."""
    return lambda d, m: node in (d, m.src)


def accept_for(slot: int, dst: int | None = None) -> Filter:
    return lambda d, m: isinstance(m, Accept) and m.slot == slot and dst in (None, d)


def accepted_for(slot: int, src: int | None = None) -> Filter:
    return lambda d, m: isinstance(m, Accepted) and m.slot == slot and src in (None, m.src)


def either(*filters: Filter) -> Filter:
    return lambda d, m: any(f(d, m) for f in filters)


def but_not(f: Filter) -> Filter:
    return lambda d, m: not f(d, m)


# -------------------------------------------------------------- slot values


def cmd(origin: int, ident: int, payload: bytes) -> Command:
    return Command(origin, ident, payload)


def batch(*payloads: bytes, origin: int = 9) -> Batch:
    """A slot value made of commands from a client of a long-gone member."""
    return Batch(tuple(cmd(origin, k, p) for k, p in enumerate(payloads, 1)))


# ------------------------------------------------------------- the network


class Net:
    """Replicas 1..n joined by a hand-driven network.

    Records are made durable (applied to a `ReplicaDurable` disk) at once unless
    the node is in `slow_disks`; then they wait for `sync(node)`. Messages wait
    in `in_flight` until a test delivers or drops them."""

    def __init__(
        self,
        members: tuple[int, ...] = MEMBERS,
        *,
        durable: dict[int, ReplicaDurable] | None = None,
        machines: dict[int, object] | None = None,
        rng_seed: int = 0,
        **config: object,
    ) -> None:
        self.cfg = ReplicaConfig.majority(members, **config)
        self.now = 0.0
        self.rng_seed = rng_seed
        durable = durable or {}
        self.disks = {i: durable.get(i, ReplicaDurable()).copy() for i in members}
        self.machines: dict[int, object] = {i: Memo() for i in members}
        self.machines.update(machines or {})
        self.nodes: dict[int, Replica] = {}
        self.in_flight: list[tuple[int, LogMessage]] = []
        self.sent: list[tuple[int, LogMessage]] = []
        self.outcomes: dict[int, dict[int, Outcome]] = {i: {} for i in members}
        self.applied: dict[int, list[int]] = {i: [] for i in members}
        self.values: dict[int, dict[int, Batch]] = {i: {} for i in members}
        self.unsynced: dict[int, list[tuple[int, list[LogRecord]]]] = {i: [] for i in members}
        self.slow_disks: set[int] = set()
        # Snapshot files (slot -> (index, the machine's bytes)), staged transfers, and
        # every snapshot op each replica asked for (obeyed at once, as a fast disk would).
        self.files: dict[int, dict[int, tuple[int, bytes]]] = {i: {} for i in members}
        self.staged: dict[int, tuple[int, bytearray] | None] = dict.fromkeys(members)
        self.snapshot_ops: dict[int, list[SnapshotOp]] = {i: [] for i in members}
        for i in members:
            self.nodes[i] = Replica(i, self.cfg, random.Random(f"{rng_seed}/{i}"),
                                    self.machines[i], self.disks[i].copy())  # type: ignore[arg-type]

    # -- effects ------------------------------------------------------------

    def obey(self, i: int, ready: LogReady) -> LogReady:
        for slot, value in ready.applied:
            assert slot not in self.values[i], f"node {i} applied slot {slot} twice"
            self.applied[i].append(slot)
            self.values[i][slot] = value
        for request_id, outcome in ready.outcomes:
            assert request_id not in self.outcomes[i], f"two outcomes for {i}/{request_id}"
            self.outcomes[i][request_id] = outcome
        self.sent += ready.send
        self.in_flight += ready.send
        if ready.persist:
            self.unsynced[i].append((ready.persist_seq, list(ready.persist)))
            if i not in self.slow_disks:
                self.sync(i)
        for op in ready.snapshots:
            self.snapshot_ops[i].append(op)
            self._snapshot(i, op)
        return ready

    def _snapshot(self, i: int, op: SnapshotOp) -> None:
        """The snapshot store of node `i`, done at once. A file is its index (8 bytes)
        and the machine's bytes."""
        node, files = self.nodes[i], self.files[i]
        if isinstance(op, TakeSnapshot):
            body = b"".join(op.chunks)
            files[op.slot] = (op.index, body)
            self.obey(i, node.snapshotted(op.slot, op.index, len(body) + 8, self.now))
        elif isinstance(op, SendChunk):
            if op.slot not in files:
                self.obey(i, node.snapshot_gone(op.dst))
                return
            index, body = files[op.slot]
            data = index.to_bytes(8, "big") + body
            part = data[op.offset:op.offset + op.size]
            chunk = SnapshotChunk(i, op.slot, op.offset, len(data), part, zlib.crc32(part))
            self.sent.append((op.dst, chunk))
            self.in_flight.append((op.dst, chunk))
        elif isinstance(op, BeginStaging):
            staged = self.staged[i]
            if staged is None or staged[0] != op.slot:
                staged = self.staged[i] = (op.slot, bytearray())
            self.obey(i, node.staged(op.slot, len(staged[1]), self.now))
        elif isinstance(op, StageChunk):
            staged = self.staged[i]
            assert staged is not None and staged[0] == op.slot and len(staged[1]) == op.offset
            staged[1].extend(op.data)
            self.obey(i, node.staged(op.slot, len(staged[1]), self.now))
        elif isinstance(op, InstallSnapshot):
            staged = self.staged[i]
            assert staged is not None and staged[0] == op.slot
            self.staged[i] = None
            index, body = int.from_bytes(staged[1][:8], "big"), bytes(staged[1][8:])
            files[op.slot] = (index, body)
            self.machines[i].restore(body)  # type: ignore[attr-defined]
            self.obey(i, node.installed(op.slot, index, len(body) + 8, self.now))
        elif isinstance(op, KeepSnapshots):
            newest = max(files, default=0)
            for slot in [s for s in files if s not in op.slots and s != newest]:
                del files[slot]

    def sync(self, i: int) -> None:
        """The disk of `i` catches up: every record written so far is durable."""
        pending, self.unsynced[i] = self.unsynced[i], []
        if not pending:
            return
        for _, records in pending:
            for record in records:
                self.disks[i].apply(record)
        self.obey(i, self.nodes[i].persisted(pending[-1][0]))

    def restart(self, i: int, rng_seed: int = 99) -> Replica:
        """Crash `i` (losing what its disk had not made durable) and build it anew."""
        self.unsynced[i] = []
        self.in_flight = [(d, m) for d, m in self.in_flight if d != i]
        self.machines[i] = machine = Memo()
        self.applied[i], self.values[i] = [], {}
        self.staged[i] = None
        snapshot = None
        if self.files[i]:  # the newest snapshot, then the log's tail
            slot = max(self.files[i])
            index, body = self.files[i][slot]
            machine.restore(body)
            snapshot = SimpleNamespace(slot=slot, index=index, size=len(body) + 8)
        node = Replica(i, self.cfg, random.Random(rng_seed), machine,  # type: ignore[arg-type]
                       self.disks[i].copy(), now=self.now, snapshot=snapshot)
        self.nodes[i] = node
        return node

    # -- events in ----------------------------------------------------------

    def submit(self, i: int, request_id: int, payload: bytes) -> LogReady:
        return self.obey(i, self.nodes[i].submit(request_id, payload, self.now))

    def read(self, i: int, request_id: int, query: bytes, mode: ReadMode) -> LogReady:
        return self.obey(i, self.nodes[i].read(request_id, query, mode, self.now))

    def step(self, i: int, message: LogMessage) -> LogReady:
        return self.obey(i, self.nodes[i].step(message, self.now))

    def tick(self, ids: Iterable[int] | None = None, dt: float = 0.0) -> None:
        self.now += dt
        for i in self.nodes if ids is None else ids:
            self.obey(i, self.nodes[i].tick(self.now))

    def deliver(self, only: Filter = everything, limit: int = 20_000) -> int:
        """Deliver in-flight messages matching `only`, oldest first, until none is left."""
        delivered = 0
        while True:
            match = next((e for e in self.in_flight if only(*e)), None)
            if match is None:
                return delivered
            self.in_flight.remove(match)
            self.step(*match)
            delivered += 1
            assert delivered < limit, "the scenario does not quiesce"

    def drop(self, which: Filter = everything) -> None:
        self.in_flight = [e for e in self.in_flight if not which(*e)]

    def duplicate(self, which: Filter) -> None:
        self.in_flight += [e for e in self.in_flight if which(*e)]

    def pending(self, which: Filter = everything) -> list[tuple[int, LogMessage]]:
        return [e for e in self.in_flight if which(*e)]

    def settle(self, rounds: int = 5, cut: Filter | None = None) -> None:
        """Heartbeat rounds with everything (but `cut`) delivered."""
        for _ in range(rounds):
            if cut is not None:
                self.drop(cut)
            self.deliver(everything if cut is None else but_not(cut))
            self.tick(dt=self.cfg.heartbeat_interval)
        if cut is not None:
            self.drop(cut)
        self.deliver()

    # -- scenarios ----------------------------------------------------------

    def elect(self, leader: int = 1) -> Replica:
        """Let `leader`'s election timer run out first, and deliver everything."""
        self.now += 2 * self.cfg.election_timeout + 0.01
        self.tick([leader])
        self.deliver()
        node = self.nodes[leader]
        assert node.is_leader
        return node

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.is_leader]

    def sent_by(self, kind: type, src: int | None = None) -> list[tuple[int, LogMessage]]:
        return [(d, m) for d, m in self.sent
                if isinstance(m, kind) and (src is None or m.src == src)]


def chosen_prefix(n: int) -> dict[int, Batch]:
    """Slots 1..n as a disk holds them chosen, each a distinct one-command value."""
    return {s: batch(b"s%d=%d" % (s, s)) for s in range(1, n + 1)}

"""Golden scenarios for the Multi-Paxos replica, in the manner of etcd raft's datadriven tests.

A scenario file (`tests/scenarios/*.txt`) is a script of steps, each followed by
`----` and the effects the replicas emitted, as `LogReady`s printed one line an
effect. Blocks are separated by a blank line; `#` starts a comment line.

    cluster n=3 prevote=false      replicas 1..n (options are ReplicaConfig fields)
    tick 1 +0.5                    advance the clock 0.5 s, then tick node 1 (or `all`)
    deliver [Type...] [to=N] [from=N]
                                   deliver matching messages, oldest first, until none is left
    drop [Type...] [to=N] [from=N] lose them
    submit N ID PAYLOAD            a client command at node N under request id ID
    read N ID MODE QUERY
    slow N / sync N                node N's disk holds records back / makes them durable
    restart N                      crash N (losing what was not durable) and build it from its disk
    disk N chosen=1-134,138 accepted=135@2.1:x,136@2.1:y promised=2.1
                                   set what N's disk holds (values are one command each),
                                   then build N from it
    state [N...]                   role, leader, ballots, commit and applied slots

Run `pytest tests/test_scenarios.py --rewrite-scenarios` to write the outputs anew;
then read the diff: it is the behaviour change.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos import LogReady, Replica, ReplicaConfig
from pnyx.protocol.multipaxos import messages as mp
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable

SCENARIOS = Path(__file__).parent / "scenarios"


def _ballot(text: str) -> Ballot:
    round_, _, node = text.partition(".")
    return Ballot(int(round_), int(node))


def _value(payload: str) -> mp.Batch:
    """A slot value of one command from a long-gone client (origin 9)."""
    return mp.Batch((mp.Command(9, 1, payload.encode()),))


class Memo:
    """A deterministic state machine: `k=v` sets k; `query(k)` reads it."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, command: bytes, index: int) -> bytes:
        key, _, value = command.partition(b"=")
        self.data[key] = value
        return b"ok " + command

    def query(self, query: bytes) -> bytes:
        return self.data.get(query, b"-")


def fmt(value: Any) -> str:
    """A compact, stable rendering of messages, records and their fields."""
    if isinstance(value, Ballot):
        return f"{value.round}.{value.node_id}"
    if isinstance(value, mp.Command):
        return f"{value.origin}:{value.id}:{value.payload.decode(errors='replace')}"
    if isinstance(value, mp.Batch):
        return "noop" if not value.commands else "[" + " ".join(map(fmt, value.commands)) + "]"
    if isinstance(value, bytes):
        return repr(value)[1:]
    if isinstance(value, tuple | list):
        return "(" + ", ".join(map(fmt, value)) + ")"
    if isinstance(value, msgspec.Struct):
        fields = ", ".join(f"{f}={fmt(getattr(value, f))}" for f in value.__struct_fields__
                           if f != "src")
        return f"{type(value).__name__}({fields})"
    return str(value)


@dataclass
class Block:
    command: str
    expected: str
    line: int


def parse(text: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            i += 1
            continue
        start = i
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ValueError(f"line {i + 1}: a step must be followed by '----'")
        i += 2
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        yield Block(line, "\n".join(out), start + 1)


def render(blocks: list[tuple[Block, str]], original: str) -> str:
    """The file with each block's output replaced (comments kept where they were)."""
    lines = original.splitlines()
    out: list[str] = []
    by_line = {b.line: got for b, got in blocks}
    i = 0
    while i < len(lines):
        if i + 1 in by_line:
            out += [lines[i], "----"]
            got = by_line[i + 1]
            if got:
                out += got.split("\n")
            i += 2
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out) + "\n"


class Scenario:
    def __init__(self) -> None:
        self.now = 0.0
        self.nodes: dict[int, Replica] = {}
        self.disks: dict[int, ReplicaDurable] = {}
        self.unsynced: dict[int, list[tuple[int, list[LogRecord]]]] = {}
        self.slow: set[int] = set()
        self.in_flight: list[tuple[int, Any]] = []
        self.config: ReplicaConfig | None = None
        self.out: list[str] = []

    # ------------------------------------------------------------ effects

    def obey(self, i: int, ready: LogReady) -> None:
        if ready.persist:
            records = " ".join(fmt(r) for r in ready.persist)
            self.out.append(f"n{i} persist#{ready.persist_seq}: {records}")
            self.unsynced[i].append((ready.persist_seq, list(ready.persist)))
        for dst, message in ready.send:
            self.out.append(f"n{i} -> n{dst}: {fmt(message)}")
            self.in_flight.append((dst, message))
        applied = ready.applied
        if len(applied) > 3:  # a replay or a catch-up: one line, not one per slot
            self.out.append(f"n{i} applies slots {applied[0][0]}-{applied[-1][0]}")
        else:
            for slot, value in applied:
                self.out.append(f"n{i} applies slot {slot}: {fmt(value)}")
        for rid, outcome in ready.outcomes:
            if outcome.ok:
                text = f"ok index={outcome.index} {fmt(outcome.result)}"
            else:
                text = f"{outcome.code.value}{' (unknown)' if outcome.unknown else ''}"
            self.out.append(f"n{i} answers #{rid}: {text}")
        if ready.persist and i not in self.slow:
            self.sync(i)

    def sync(self, i: int) -> None:
        pending, self.unsynced[i] = self.unsynced[i], []
        if pending:
            for _, records in pending:
                for record in records:
                    self.disks[i].apply(record)
            self.obey(i, self.nodes[i].persisted(pending[-1][0]))

    # -------------------------------------------------------------- steps

    def run(self, command: str) -> str:
        self.out = []
        words = command.split()
        verb, args = words[0], words[1:]
        getattr(self, "do_" + verb)(args)
        return "\n".join(self.out)

    def do_cluster(self, args: list[str]) -> None:
        options: dict[str, Any] = {}
        n = 3
        for arg in args:
            key, _, value = arg.partition("=")
            if key == "n":
                n = int(value)
            else:
                options[key] = {"true": True, "false": False}.get(value) if value in (
                    "true", "false") else (float(value) if "." in value else int(value))
        members = tuple(range(1, n + 1))
        self.config = ReplicaConfig.majority(members, **options)
        for i in members:
            self.disks[i] = ReplicaDurable()
            self.unsynced[i] = []
            self._build(i)

    def _build(self, i: int) -> None:
        assert self.config is not None
        self.nodes[i] = Replica(i, self.config, random.Random(i), Memo(),  # type: ignore[arg-type]
                                self.disks[i].copy(), now=self.now)

    def _ids(self, args: list[str]) -> list[int]:
        return list(self.nodes) if not args or args == ["all"] else [int(a) for a in args]

    def do_tick(self, args: list[str]) -> None:
        ids = [a for a in args if not a.startswith("+")]
        for a in args:
            if a.startswith("+"):
                self.now += float(a[1:])
        for i in self._ids(ids):
            self.obey(i, self.nodes[i].tick(self.now))

    def _matching(self, args: list[str]) -> Any:
        kinds = tuple(getattr(mp, a) for a in args if "=" not in a)
        opts = dict(a.split("=") for a in args if "=" in a)

        def match(dst: int, m: Any) -> bool:
            return ((not kinds or isinstance(m, kinds))
                    and ("to" not in opts or dst == int(opts["to"]))
                    and ("from" not in opts or m.src == int(opts["from"])))
        return match

    def do_deliver(self, args: list[str]) -> None:
        match = self._matching(args)
        for _ in range(10_000):
            entry = next((e for e in self.in_flight if match(*e)), None)
            if entry is None:
                return
            self.in_flight.remove(entry)
            dst, message = entry
            self.obey(dst, self.nodes[dst].step(message, self.now))
        raise AssertionError("the scenario does not quiesce")

    def do_drop(self, args: list[str]) -> None:
        match = self._matching(args)
        dropped = [e for e in self.in_flight if match(*e)]
        self.in_flight = [e for e in self.in_flight if not match(*e)]
        self.out.append(f"dropped {len(dropped)}")

    def do_submit(self, args: list[str]) -> None:
        i, rid, payload = int(args[0]), int(args[1]), " ".join(args[2:]).encode()
        self.obey(i, self.nodes[i].submit(rid, payload, self.now))

    def do_read(self, args: list[str]) -> None:
        i, rid, mode, query = int(args[0]), int(args[1]), args[2], args[3].encode()
        self.obey(i, self.nodes[i].read(rid, query, mode, self.now))  # type: ignore[arg-type]

    def do_slow(self, args: list[str]) -> None:
        self.slow.update(int(a) for a in args)

    def do_sync(self, args: list[str]) -> None:
        for i in self._ids(args):
            self.slow.discard(i)
            self.sync(i)

    def do_restart(self, args: list[str]) -> None:
        for i in self._ids(args):
            self.unsynced[i] = []
            self.in_flight = [(d, m) for d, m in self.in_flight if d != i]
            self._build(i)
            self.out.append(f"n{i} restarted: promised {fmt(self.nodes[i].promised)}, "
                            f"commit {self.nodes[i].commit}")

    def do_disk(self, args: list[str]) -> None:
        i = int(args[0])
        disk = self.disks[i]
        for arg in args[1:]:
            key, _, value = arg.partition("=")
            if key == "chosen":
                for part in value.split(","):
                    first, _, last = part.partition("-")
                    for slot in range(int(first), int(last or first) + 1):
                        disk.chosen[slot] = _value(f"v{slot}")
            elif key == "accepted":
                for part in value.split(","):
                    slot, _, rest = part.partition("@")
                    ballot, _, payload = rest.partition(":")
                    entry = mp.Entry(int(slot), _ballot(ballot), _value(payload))
                    disk.accepted[entry.slot] = entry
                    disk.promised = max(disk.promised, entry.ballot)
            elif key == "promised":
                disk.promised = max(disk.promised, _ballot(value))
            else:
                raise ValueError(f"disk: unknown field {key!r}")
        self._build(i)

    def do_state(self, args: list[str]) -> None:
        for i in self._ids(args):
            r = self.nodes[i]
            self.out.append(
                f"n{i}: {r.role.value} leader={r.leader} ballot={fmt(r.ballot)} "
                f"promised={fmt(r.promised)} commit={r.commit} applied={r.applied}")

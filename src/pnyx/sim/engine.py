"""The simulation engine: virtual time, a queue of events, disks, the network, faults.

It drives any pure process that speaks the core's event/effect language —
`step(message, now)`, `tick(now)`, `persisted(seq)`, each returning a ready
batch with `persist`, `persist_seq`, `send` and `wake_at` — which both the
single-decree `SynodNode` and the Multi-Paxos `Replica` do. The engine carries
out those effects: records go to a per-process disk and become durable one
fsync later, unless the process crashes first; messages go to the seeded
network; wake-ups are scheduled. A crash throws the process away with
everything not yet durable; a restart builds a new one from its disk.
Subclasses say how to build a process, what a record does to a disk, and
what else to make of a ready batch (learned values, client outcomes).

The Multi-Paxos cluster (`pnyx.sim.cluster`) instead runs the node's own
`Driver` on every process, through the ports this engine offers it: `timer`
(the virtual clock; a crash cancels every timer of the process), `send` (the
seeded network) and `disks` (what each process made durable). `receive` is how
a delivered message reaches a process.

Ties in virtual time are broken by insertion order and every random draw
comes from an RNG seeded from the run's seed, so a seed replays one run.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import IO, Any, Generic, Protocol, TypeVar

from pnyx.sim.faults import Fault, FaultConfig, schedule
from pnyx.sim.network import Network, NetworkConfig
from pnyx.sim.trace import Trace, describe


class Ready(Protocol):
    persist: Any
    persist_seq: int
    send: list[tuple[int, Any]]
    wake_at: float | None


class Process(Protocol):
    def step(self, m: Any, now: float) -> Any: ...
    def tick(self, now: float) -> Any: ...
    def persisted(self, seq: int) -> Any: ...


P = TypeVar("P", bound=Process)
D = TypeVar("D")

# Event kinds; the queue holds (time, seq, kind, node, payload, incarnation).
DELIVER, WAKE, DURABLE, FAULT, CALL, TIMER, REBOOT = range(7)

# What an armed reboot waits for: a ballot going out (either message family).
ARMING_MESSAGES = frozenset({"Prepare", "Accept"})
ANY = 0  # armed for whichever process sends such a message next


class SimTimer:
    """A callback at a moment of virtual time, for one incarnation of one process."""

    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Any, args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Engine(Generic[P, D]):
    def __init__(
        self,
        seed: int,
        nodes: int,
        network: NetworkConfig,
        faults: FaultConfig,
        fsync: float,
        max_time: float,
        trace_sink: IO[bytes] | None = None,
        trace: bool = False,
        reboot_on_send: bool = False,
    ) -> None:
        self.seed = seed
        # A reboot waits for its target's next Prepare or Accept (see `reboot`).
        self.reboot_on_send = reboot_on_send
        self.armed: int | None = None  # a process id, ANY, or None: not armed
        self.armed_for: frozenset[str] = ARMING_MESSAGES
        self.reboots = 0
        # Called with the event's process (0: none) after each event, if set.
        self.after_event: Callable[[int], None] | None = None
        self.ids = list(range(1, nodes + 1))
        self.network = Network(self.ids, network, random.Random(f"{seed}/network"))
        self.fsync = fsync
        self.max_time = max_time
        self.trace = Trace(trace_sink) if (trace or trace_sink is not None) else None
        self.now = 0.0
        self.nodes: dict[int, P | None] = dict.fromkeys(self.ids)
        self.disks: dict[int, D] = {i: self.empty_disk() for i in self.ids}
        self.incarnation = dict.fromkeys(self.ids, 0)
        self._disk_free_at = dict.fromkeys(self.ids, 0.0)
        self._waiting_write: dict[int, tuple[list[tuple[int, Any]], float] | None] = (
            dict.fromkeys(self.ids)
        )
        self._wake_at: dict[int, float | None] = dict.fromkeys(self.ids)
        self._queue: list[tuple[float, int, int, int, object, int]] = []
        self._seq = 0
        self.sent = self.delivered = self.lost = self.duplicated = self.events = 0
        self.faults = schedule(self.ids, faults, random.Random(f"{seed}/faults"))
        for fault in self.faults:
            self.push(fault.time, FAULT, 0, fault)

    # --------------------------------------------------------- for subclasses

    def empty_disk(self) -> D:
        raise NotImplementedError

    def write(self, disk: D, records: Any) -> D:
        """The disk after `records` became durable on it."""
        raise NotImplementedError

    def make_process(self, i: int, rng: random.Random) -> P:
        raise NotImplementedError

    def after(self, i: int, ready: Any) -> None:
        """Whatever else a ready batch means (learned values, client outcomes)."""

    def on_send(self, src: int, message: Any) -> None:
        """Every message a process sends, once, as it leaves."""

    def on_restart(self, i: int) -> None:
        """Process `i` is back, built from its disk."""

    def call(self, node: int, payload: object) -> None:
        """A `CALL` event the subclass scheduled (client requests and the like)."""

    def done(self) -> bool:
        """Stop early: the run has shown what it had to."""
        return False

    # ----------------------------------------------------------------- driver

    def start(self) -> None:
        for i in self.ids:
            self.nodes[i] = self.make_process(i, self._rng(i))

    def _rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}/node{i}/{self.incarnation[i]}")

    def run(self) -> None:
        queue = self._queue
        after_event = self.after_event
        while queue and not self.done():
            time, _, kind, node, payload, incarnation = heapq.heappop(queue)
            if time > self.max_time:
                break
            self.now = time
            self.events += 1
            if kind == DELIVER:
                self._deliver(node, payload)  # type: ignore[arg-type]
            elif kind == WAKE:
                self._wake(node, time, incarnation)
            elif kind == DURABLE:
                self._durable(node, payload, incarnation)  # type: ignore[arg-type]
            elif kind == FAULT:
                self._fault(payload)  # type: ignore[arg-type]
            elif kind == TIMER:
                timer: SimTimer = payload  # type: ignore[assignment]
                if not timer.cancelled and incarnation == self.incarnation[node] \
                        and self.nodes[node] is not None:
                    timer.callback(*timer.args)
            elif kind == REBOOT:
                if incarnation == self.incarnation[node] and self.nodes[node] is not None:
                    if self.trace:
                        self.trace.emit(time, "rebooted", node=node)
                    self._reboot_now(node)
            else:
                self.call(node, payload)
            if after_event is not None:
                after_event(node)

    def push(self, time: float, kind: int, node: int, payload: object,
             incarnation: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, kind, node, payload, incarnation))

    def add_process(self, i: int, disk: D) -> P:
        """A process with a new id joins the run with `disk` (a membership change adds
        a node): the per-process state and the network grow to hold it."""
        assert i not in self.nodes, i
        self.ids.append(i)
        self.network.add_node(i, random.Random(f"{self.seed}/network/{i}"))
        self.disks[i] = disk
        self.incarnation[i] = 0
        self._disk_free_at[i] = self.now
        self._waiting_write[i] = None
        self._wake_at[i] = None
        node = self.make_process(i, self._rng(i))
        self.nodes[i] = node
        return node

    def timer(self, i: int, when: float, callback: Any, args: tuple[Any, ...]) -> SimTimer:
        """Call `callback(*args)` at `when` (not before now), unless process `i` crashes
        first or the timer is cancelled."""
        timer = SimTimer(callback, args)
        self.push(max(when, self.now), TIMER, i, timer, self.incarnation[i])
        return timer

    def send(self, src: int, dst: int, message: Any) -> None:
        self._send(src, dst, message)

    def receive(self, i: int, node: P, message: Any) -> None:
        """A message reaches live process `i`."""
        self.apply(i, node.step(message, self.now))

    def apply(self, i: int, ready: Ready) -> None:
        """Carry out the effects a process asked for."""
        now = self.now
        if ready.persist:
            self._write_later(i, (ready.persist_seq, ready.persist))
        for dst, message in ready.send:
            self._send(i, dst, message)
        self.after(i, ready)
        if ready.wake_at is not None:
            wake = max(ready.wake_at, now)
            if wake != self._wake_at[i]:
                self._wake_at[i] = wake
                self.push(wake, WAKE, i, None, self.incarnation[i])

    def _write_later(self, i: int, item: tuple[int, Any]) -> None:
        """Group commit: one disk per process, one fsync at a time; records that
        arrive while a write waits for the disk join that write."""
        now = self.now
        waiting = self._waiting_write[i]
        if waiting is not None and now < waiting[1]:
            waiting[0].append(item)
            return
        start = max(now, self._disk_free_at[i])
        done = start + self.fsync
        self._disk_free_at[i] = done
        batch = [item]
        self._waiting_write[i] = (batch, start)
        self.push(done, DURABLE, i, batch, self.incarnation[i])

    def _send(self, src: int, dst: int, message: Any) -> None:
        self.sent += 1
        self.on_send(src, message)
        armed = self.armed
        if armed is not None and armed in (src, ANY) \
                and type(message).__name__ in self.armed_for:
            # After the rest of this batch leaves, before its records are durable.
            self.armed = None
            self.push(self.now, REBOOT, src, None, self.incarnation[src])
        if self.trace:
            self.trace.emit(self.now, "send", dst=dst, msg=describe(message))
        if dst not in self.nodes:
            self.lost += 1  # an id no process ever had (a member not yet started)
            return
        delays = self.network.delays(src, dst)
        if not delays:
            self.lost += 1
            if self.trace:
                self.trace.emit(self.now, "drop", src=src, dst=dst)
        elif len(delays) > 1:
            self.duplicated += 1
        for delay in delays:
            self.push(self.now + delay, DELIVER, dst, (src, message))

    def _deliver(self, dst: int, payload: tuple[int, Any]) -> None:
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
        self.receive(dst, node, message)

    def _wake(self, i: int, time: float, incarnation: int) -> None:
        node = self.nodes[i]
        if node is None or incarnation != self.incarnation[i] or self._wake_at[i] != time:
            return  # stale: the process crashed, or asked for another time since
        self._wake_at[i] = None
        self.apply(i, node.tick(time))

    def _durable(self, i: int, batch: list[tuple[int, Any]], incarnation: int) -> None:
        node = self.nodes[i]
        if node is None or incarnation != self.incarnation[i]:
            return  # the process crashed before this write reached the disk
        for _, records in batch:
            self.disks[i] = self.write(self.disks[i], records)
        seq = batch[-1][0]
        if self.trace:
            self.trace.emit(self.now, "durable", node=i, seq=seq, records=len(batch))
        self.apply(i, node.persisted(seq))

    def partition(self, minority: set[int]) -> None:
        self.network.partition(minority)

    def crash(self, i: int) -> None:
        if self.nodes[i] is not None:
            self.nodes[i] = None
            self.incarnation[i] += 1
            self._wake_at[i] = None
            self._disk_free_at[i] = self.now
            self._waiting_write[i] = None

    def restart(self, i: int) -> None:
        if self.nodes[i] is None:
            self.nodes[i] = self.make_process(i, self._rng(i))
            self.on_restart(i)

    def wipe(self, i: int) -> None:
        """Crash `i` (itself: a wipe is never redirected) and erase its disk: it
        restarts (at its "restart") empty."""
        Engine.crash(self, i)
        self.disks[i] = self.empty_disk()

    def leader(self) -> int | None:
        """The process a leader-aimed fault hits now, if the run has a leader."""
        return None

    def reboot(self, i: int) -> None:
        """Crash the leader (else `i`) and restart it at once from its disk, mid-ballot.
        With `reboot_on_send` the reboot waits until that process next sends a Prepare
        or an Accept and strikes right after that batch has left, before the records
        behind it are durable: a process that sends ahead of its disk, or does not
        save what it must before it sends, loses what it told the others. A later
        reboot fault re-aims a reboot still waiting."""
        target = self.leader()
        i = target if target is not None else i
        if self.reboot_on_send:
            self.armed, self.armed_for = i, ARMING_MESSAGES
        else:
            self._reboot_now(i)

    def _reboot_now(self, i: int) -> None:
        """The base crash and restart: a subclass's redirection of crashes does not apply."""
        if self.nodes[i] is not None:
            self.reboots += 1
            Engine.crash(self, i)
            Engine.restart(self, i)

    def _fault(self, fault: Fault) -> None:
        if self.trace:
            self.trace.emit(self.now, fault.kind, nodes=list(fault.nodes))
        if fault.kind == "partition":
            self.partition(set(fault.nodes))
        elif fault.kind == "heal":
            self.network.heal()
        elif fault.kind == "crash":
            self.crash(fault.nodes[0])
        elif fault.kind == "restart":
            self.restart(fault.nodes[0])
        elif fault.kind == "reboot":
            self.reboot(fault.nodes[0])
        elif fault.kind == "wipe":
            self.wipe(fault.nodes[0])

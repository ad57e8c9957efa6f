"""`DirectNode`: a `NodeAPI` with consensus bypassed — the cost floor of the stack.

It answers the same calls as `pnyx.node.Node` with the same `Outcome`s, but
every command is applied straight to the state machine, in the order it
arrives: no log, no disk, no peers, no leader. `pnyx serve --no-consensus`
serves one behind the same HTTP and binary client APIs, so a benchmark of it
measures everything pnyx does *except* Paxos and fsync: framing, decoding,
the event loop, the key-value machine, de-duplication and the metrics. The
gap between it and a replicated cluster is the price of replication.

It is not a way to run pnyx for real: nothing is durable and nothing is
replicated, so every write is lost when the process stops. Every read mode
is trivially linearizable here (there is one copy, and each call runs to the
end on the event loop before the next one starts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pnyx.node.driver import safe_machine
from pnyx.node.metrics import Metrics
from pnyx.node.requests import SHUTTING_DOWN
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode
from pnyx.statemachine.base import StateMachine
from pnyx.statemachine.kv import KVMachine


class Applied:
    """The handle of a request a `DirectNode` has already answered: nothing to cancel."""

    def cancel(self) -> None:
        return None


APPLIED = Applied()

DEFAULT_MAX_COMMAND = 1 << 20
"""The replica's default command size limit; a DirectNode refuses the same commands."""


class DirectNode:
    """Applies each submitted command at the next index of an imaginary log, at once.

    `machine` defaults to a `KVMachine` with room for as many clients as
    `pnyx serve` gives its nodes, so the same workload de-duplicates the same
    way. It is wrapped as the driver wraps a replica's (`safe_machine`), so a
    machine that raises answers with an error result instead of stopping the
    node. A stopped node answers `SHUTTING_DOWN`, a definite failure, as `Node`
    does for a request that never reached its log (here, none ever does).
    """

    def __init__(
        self,
        node_id: int = 1,
        machine: StateMachine | None = None,
        metrics: Metrics | None = None,
        *,
        max_command: int = DEFAULT_MAX_COMMAND,
        address: str = "127.0.0.1:0",
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics if metrics is not None else Metrics()
        self.machine = safe_machine(
            machine if machine is not None else KVMachine(max_clients=65536))
        self.max_command = max_command
        self.address = address
        # The log index of the last command applied; every command takes the
        # next one, as a slot of one command would in the replica.
        self.index = 0
        self.closed = False
        # A lone node leads itself, as a one-node cluster does after its election.
        self.metrics.set_role("leader")

    # Lifecycle, in the same shape as `Node`, so a server can start and stop either.

    async def start(self) -> None:
        self.closed = False

    async def stop(self) -> None:
        self.closed = True

    # ------------------------------------------------------------- NodeAPI

    def submit_nowait(self, command: bytes, done: Callable[[Outcome], None], *,
                      timeout: float | None = None) -> Applied:
        """Apply `command` now and call `done` with its outcome before returning."""
        done(self._apply(command))
        return APPLIED

    def read_nowait(self, query: bytes, mode: ReadMode, done: Callable[[Outcome], None], *,
                    timeout: float | None = None) -> Applied:
        """Answer `query` now, calling `done` before returning; every `mode` is the same."""
        done(self._query(query))
        return APPLIED

    async def submit(self, command: bytes, *, timeout: float | None = None) -> Outcome:
        """Apply `command` now; `timeout` is accepted for the interface and never needed."""
        return self._apply(command)

    async def read(self, query: bytes, mode: ReadMode, *,
                   timeout: float | None = None) -> Outcome:
        """Answer from the one copy there is; every `mode` gives the same, freshest answer."""
        return self._query(query)

    def _apply(self, command: bytes) -> Outcome:
        started = time.perf_counter()
        self.metrics.proposed(1)
        if self.closed:
            return SHUTTING_DOWN
        if len(command) > self.max_command:
            return Outcome.failed(Code.TOO_LARGE, f"command too large: {len(command)} "
                                  f"bytes, limit {self.max_command}")
        self.index += 1
        result = self.machine.apply(command, self.index)
        # What the runtime counts per chosen slot, so /metrics reads the same.
        self.metrics.chosen(1, 1)
        self.metrics.observe_batch(1)
        self.metrics.observe_commit_latency(time.perf_counter() - started)
        return Outcome(True, result, self.index)

    def _query(self, query: bytes) -> Outcome:
        if self.closed:
            return SHUTTING_DOWN
        return Outcome(True, self.machine.query(query), self.index)

    def status(self) -> dict[str, Any]:
        """The shape of `Node.status()`: one member, always the leader, always reachable."""
        return {
            "id": self.node_id,
            "role": "leader",
            "leader": self.node_id,
            "ballot": "direct",
            "commit_index": self.index,
            "applied_index": self.index,
            "commit_slot": self.index,
            "applied_slot": self.index,
            "members": {str(self.node_id): {"address": self.address, "reachable": True}},
            # Says plainly what this node is, so nobody mistakes it for a replica.
            "consensus": False,
        }

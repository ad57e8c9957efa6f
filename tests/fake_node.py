"""A fake `NodeAPI` for the HTTP, client and CLI tests: no Paxos, one `KVMachine`.

`submit` applies the command at the next log index at once; `read` answers
from the machine. Switches make it misbehave the ways a real node can:
`unavailable` (every call waits out its timeout, as with no quorum), `hang`
(never answers, as a stuck node), `lose_replies` (apply, then report the
outcome unknown, as when the leader changed after the command was chosen),
`refuse` (refuse every command), `refuse_reads` (refuse every read) and
`fail_reads` (reads fail a few times before succeeding). `ServerThread`
serves one over real TCP for blocking tests (with `serve_kwargs`, through
`serve_http`, as `pnyx serve` does: limits and TLS).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from aiohttp import web

from pnyx.api.http import make_app, serve_http
from pnyx.node.metrics import Metrics
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode
from pnyx.statemachine import KVMachine, validate


class FakeNode:
    def __init__(self, node_id: int = 1) -> None:
        self.node_id = node_id
        self.metrics = Metrics()
        self.machine = KVMachine()
        self.index = 0
        self.unavailable = False
        self.hang = False
        self.lose_replies = 0  # how many of the next submits apply but report unknown
        self.refuse: Outcome | None = None  # the answer to every command
        self.refuse_reads: Outcome | None = None  # the answer to every read
        self.fail_reads = 0
        self.submitted: list[bytes] = []  # every command, including retries
        self.reads: list[tuple[bytes, ReadMode]] = []

    async def _misbehave(self, timeout: float) -> Outcome | None:
        if self.hang:
            await asyncio.Event().wait()
        if self.unavailable:
            await asyncio.sleep(timeout)
            return Outcome.failed(Code.NO_LEADER, "no quorum within the timeout",
                                  unknown=True)
        return None

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        self.submitted.append(command)
        bad = await self._misbehave(timeout)
        if bad is not None:
            return bad
        if self.refuse is not None:
            return self.refuse
        validate(command)  # what the real node does first; the HTTP layer must pass it
        self.index += 1
        result = self.machine.apply(command, self.index)
        self.metrics.proposed()
        self.metrics.chosen(1, 1)
        if self.lose_replies:
            self.lose_replies -= 1
            return Outcome.failed(Code.ABORTED, "aborted: the leader lost its ballot",
                                  unknown=True)
        return Outcome(True, result, self.index)

    async def read(self, query: bytes, mode: ReadMode, *, timeout: float) -> Outcome:
        self.reads.append((query, mode))
        bad = await self._misbehave(timeout)
        if bad is not None:
            return bad
        if self.refuse_reads is not None:
            return self.refuse_reads
        if self.fail_reads:
            self.fail_reads -= 1
            return Outcome.failed(Code.NOT_LEADER, "not the leader any more")
        return Outcome(True, self.machine.query(query), self.machine.applied_index)

    def status(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "role": "leader",
            "leader": self.node_id,
            "ballot": [1, self.node_id],
            "commit_index": self.index,
            "applied_index": self.machine.applied_index,
            "members": {str(self.node_id): {"address": "127.0.0.1:0", "reachable": True}},
        }


class ServerThread:
    """`make_app(node)` served on 127.0.0.1 (an ephemeral port) by an event loop in a thread,
    for tests that drive it with blocking code (the sync client, the CLI, raw sockets)."""

    def __init__(self, node: FakeNode | None = None, *,
                 serve_kwargs: dict[str, Any] | None = None, **app_kwargs: Any) -> None:
        self.node = node if node is not None else FakeNode()
        self.app_kwargs = app_kwargs
        self.serve_kwargs = serve_kwargs or {}
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> None:
        if self.serve_kwargs:
            # As `pnyx serve` runs it: limits, TLS (`serve_http`).
            served = await serve_http(self.node, "127.0.0.1", 0, **self.serve_kwargs)
            self._runner, self.port = served.runner, served.port
            return
        # A short shutdown: a test may leave a request hanging on purpose.
        self._runner = web.AppRunner(make_app(self.node, **self.app_kwargs),
                                     access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop, from the test's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def dead_address() -> str:
    """An address nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"

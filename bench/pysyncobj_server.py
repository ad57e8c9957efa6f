"""One PySyncObj node serving pnyx's binary client protocol, for `pnyx bench`.

    python bench/pysyncobj_server.py --id 1 --cluster 1=127.0.0.1:7001,2=...,3=... \\
        --client 127.0.0.1:9001

PySyncObj (Raft, pure Python) replicates a `ReplDict` between the members of
`--cluster`, with PySyncObj's defaults: no fsync, the journal in memory,
commands batched per append-entries. This process puts pnyx's front end in
front of it — the same framed, pipelined MessagePack protocol
(`pnyx.wire`) that `pnyx serve --client` speaks, served by the same code
when `pnyx.api.binary` is installed — so the benchmark drives both systems
with the same load generator and the same bytes, and the difference it
measures is the replication engine, not the front door.

Translation (`SyncObjNode`, a `pnyx.api.node_api.NodeAPI`):

- a submitted `Put` is `ReplDict.set(key, value, callback=...)` and a `Delete`
  is `ReplDict.pop(key, callback=...)`; the reply goes out when the callback
  fires, which is when PySyncObj has committed and applied the command;
- a `Get`, submitted or read in any mode, is a local `ReplDict.get`: PySyncObj
  has no linearizable read, so read numbers flatter it;
- conditional commands (`prev_value`, ...) are refused: a dict has no CAS
  to translate them to; PySyncObj does no de-duplication either.

PySyncObj runs its own thread; its callbacks are carried to the asyncio loop
with `call_soon_threadsafe`, one wake-up for however many callbacks arrived
since the last one, so the bridge costs as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import sys
from typing import Any

import msgspec
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

from pnyx import wire
from pnyx.protocol.multipaxos import Outcome, ReadMode
from pnyx.statemachine import kv

# PySyncObj's numeric Raft states, as pnyx's role names.
_ROLES = {0: "follower", 1: "candidate", 2: "leader"}

# Queries are `kv.Get` or `kv.Keys`, encoded as `kv.encode_query` does.
_query_decoder = msgspec.msgpack.Decoder(kv.Query)


def _parse_member(text: str) -> tuple[int, str]:
    ident, sep, address = text.partition("=")
    if not sep or not ident.strip().isdigit() or ":" not in address:
        raise ValueError(f"bad member {text!r}: expected ID=HOST:PORT")
    return int(ident), address.strip()


class SyncObjNode:
    """A `NodeAPI` over one PySyncObj member holding a replicated dict."""

    def __init__(self, node_id: int, members: dict[int, str], *, batch: bool = True,
                 append_period: float | None = None) -> None:
        self.node_id = node_id
        self.members = members
        self.by_address = {address: ident for ident, address in members.items()}
        self.data = ReplDict()
        others = [address for ident, address in members.items() if ident != node_id]
        # PySyncObj's defaults, stated: nothing on disk, so no fsync anywhere.
        tuning: dict[str, Any] = {"appendEntriesUseBatch": batch}
        if append_period is not None:
            tuning["appendEntriesPeriod"] = append_period
        conf = SyncObjConf(journalFile=None, fullDumpFile=None, **tuning)
        self.sync = SyncObj(members[node_id], others, conf=conf, consumers=[self.data])
        self.loop = asyncio.get_running_loop()
        self._done: collections.deque[tuple[asyncio.Future[Outcome], Outcome]] = (
            collections.deque())
        self._wake_pending = False
        # NodeAPI asks for metrics; nothing reads them here.
        self.metrics: Any = None

    # --------------------------------------------------- the thread bridge

    def _complete(self, fut: asyncio.Future[Outcome], outcome: Outcome) -> None:
        """Called on PySyncObj's thread: queue the answer and wake the loop once per batch."""
        self._done.append((fut, outcome))
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Clear the flag *before* draining: a callback that lands while we drain
        # either is drained now or schedules another wake-up; none is stranded.
        self._wake_pending = False
        done = self._done
        while done:
            fut, outcome = done.popleft()
            if not fut.done():
                fut.set_result(outcome)

    def _replicated(self, call: Any, *args: Any, result: Any) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = self.loop.create_future()

        def callback(value: Any, error: Any) -> None:
            if error is not None and error != 0:  # FAIL_REASON.SUCCESS is 0
                self._complete(fut, Outcome(False, error=f"pysyncobj error {error}",
                                            unknown=True))
            else:
                index = self.sync.raftLastApplied
                self._complete(fut, Outcome(True, kv.encode_result(result(value, index)),
                                            index))

        call(*args, callback=callback)
        return fut

    # ------------------------------------------------------------ NodeAPI

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        try:
            request = kv.validate(command)
        except kv.CommandError as exc:
            return Outcome(True, kv.encode_result(kv.Error(exc.message, exc.code)))
        op = request.command
        if isinstance(op, kv.Get):
            return self._local_get(op.key)
        if op.prev_value is not None or op.prev_index is not None or op.prev_exist is not None:
            return Outcome(False, error="conditional commands are not supported over PySyncObj")
        if isinstance(op, kv.Put):
            fut = self._replicated(self.data.set, op.key, op.value,
                                   result=lambda _value, index: kv.Ok(index))
        else:
            fut = self._replicated(
                self.data.pop, op.key, None,
                result=lambda value, index: kv.NotFound() if value is None else kv.Ok(index))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return Outcome(False, error="no commit within the timeout", unknown=True)

    async def read(self, query: bytes, mode: ReadMode, *, timeout: float) -> Outcome:
        try:
            decoded = _query_decoder.decode(query)
        except Exception as exc:
            return Outcome(True, kv.encode_result(kv.Error(f"malformed query: {exc}",
                                                           kv.ErrorCode.MALFORMED)))
        if not isinstance(decoded, kv.Get):
            return Outcome(False, error="key listings are not supported over PySyncObj")
        return self._local_get(decoded.key)

    def _local_get(self, key: str) -> Outcome:
        value = self.data.get(key)
        index = self.sync.raftLastApplied
        result = kv.NotFound() if value is None else kv.Ok(index, value)
        return Outcome(True, kv.encode_result(result), index)

    def status(self) -> dict[str, Any]:
        raw = self.sync.getStatus()
        leader = raw.get("leader")
        leader_id = None if leader is None else self.by_address.get(str(leader))
        return {
            "id": self.node_id,
            "role": _ROLES.get(raw.get("state", 0), "follower"),
            "leader": leader_id,
            "ballot": str(raw.get("raft_term")),
            "commit_index": raw.get("commit_idx", 0),
            "applied_index": raw.get("last_applied", 0),
            "members": {str(i): {"address": a, "reachable": True}
                        for i, a in sorted(self.members.items())},
            "system": "pysyncobj",
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sync.destroy()


# ------------------------------------------------- a minimal wire server


class _WireProtocol(asyncio.Protocol):
    """The binary protocol's server side, for when `pnyx.api.binary` is not installed.

    Each frame is one `ClientRequest`; each is handled in its own task and
    answered in whatever order they finish, as the protocol allows.
    """

    def __init__(self, node: SyncObjNode) -> None:
        self.node = node
        self.frames = wire.FrameDecoder(wire.MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        # The loop keeps only weak references to tasks: hold them until done.
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        try:
            for payload in self.frames.frames():
                request = wire.request_decoder.decode(payload)
                task = asyncio.ensure_future(self._answer(request))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except Exception:  # an oversized frame or a malformed request: a broken client
            assert self.transport is not None
            self.transport.close()

    async def _answer(self, request: wire.ClientRequest) -> None:
        node = self.node
        if request.op == "submit":
            outcome = await node.submit(request.payload, timeout=request.timeout)
        elif request.op == "read":
            outcome = await node.read(request.payload, request.mode, timeout=request.timeout)
        else:
            outcome = Outcome(True, json.dumps(node.status()).encode())
        if self.transport is not None:
            self.transport.write(wire.frame(wire.ClientResponse(
                request.id, outcome.ok, outcome.result, outcome.index, outcome.error,
                outcome.unknown)))


async def _serve_clients(node: SyncObjNode, host: str, port: int) -> Any:
    try:
        from pnyx.api.binary import serve_clients  # type: ignore[import-not-found]
    except ImportError:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _WireProtocol(node), host, port)
    from pnyx.api.limits import ClientLimits

    # PySyncObj has no admission control and no bound on requests in flight: pnyx's
    # front door must not add them (its batching wants thousands in flight).
    unbounded = 1 << 30
    return await serve_clients(node, host, port,
                               limits=ClientLimits(max_inflight=unbounded,
                                                   max_pending=unbounded))


async def _main(args: argparse.Namespace) -> int:
    members = dict(_parse_member(m) for m in args.cluster.split(","))
    if args.id not in members:
        print(f"pysyncobj_server: --id {args.id} is not in --cluster", file=sys.stderr)
        return 2
    host, _, port = args.client.rpartition(":")
    node = SyncObjNode(args.id, members, batch=not args.no_batch,
                       append_period=args.append_entries_period)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await _serve_clients(node, host, int(port))
    except OSError as exc:
        node.close()
        print(f"pysyncobj_server: cannot serve clients on {args.client}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"pysyncobj node {args.id}: raft on {members[args.id]}, clients on {args.client}",
          flush=True)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            server.close()
        node.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", type=int, required=True, help="this member's id in --cluster")
    parser.add_argument("--cluster", required=True, metavar="ID=HOST:PORT,...",
                        help="every member and its Raft address")
    parser.add_argument("--client", required=True, metavar="HOST:PORT",
                        help="serve the binary client protocol here")
    parser.add_argument("--no-batch", action="store_true",
                        help="appendEntriesUseBatch=False: send each command at once "
                        "(PySyncObj's setting for latency) instead of every append period")
    parser.add_argument("--append-entries-period", type=float, metavar="SECONDS",
                        help="PySyncObj's appendEntriesPeriod (default 0.1)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except ValueError as exc:
        print(f"pysyncobj_server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

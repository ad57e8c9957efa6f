"""Specs of the node's request machinery (`Node.submit_nowait`/`read_nowait` and the
coroutines over them): one deadline per request, retries of reads, cancellation,
shutdown, and the binary protocol on top of it.

Real `Node`s on 127.0.0.1 with in-memory stores, all in one event loop. "No quorum"
is a 3-member cluster with only one member running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import types
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from pnyx import wire
from pnyx.api.binary import NODE_GRACE, close_server, serve_clients
from pnyx.node import Address, Node, NodeConfig
from pnyx.node.direct import DirectNode
from pnyx.node.metrics import Metrics
from pnyx.node.requests import DEADLINE_TICK, SHUTTING_DOWN, SHUTTING_DOWN_UNKNOWN
from pnyx.protocol.ballot import ZERO
from pnyx.protocol.multipaxos import Code, LogReady, Outcome, Role
from pnyx.protocol.multipaxos.membership import genesis
from pnyx.protocol.multipaxos.messages import Batch, Command
from pnyx.protocol.multipaxos.records import Standing
from pnyx.statemachine import ERROR_PREFIX, kv
from pnyx.storage import MemoryLogStore, SqliteLogStore
from pnyx.testing import free_ports

SLACK = 0.2  # how late past its timeout a request may finish (the deadline tick is 50 ms)
EARLY = 1e-3  # float rounding of the deadline buckets; a request never ends sooner


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 15))

    return wrapper


def make_node(tmp_path: Path, node_id: int, ports: list[int], *,
              cut_off_after: float | None = None, **replica: Any) -> Node:
    """Member `node_id` of a 3-member cluster on `ports`; `replica` overrides ReplicaConfig.
    A member alone is cut off after `cut_off_after` election timeouts (None: never, so
    that requests wait out their own timeouts, which is what most tests here time)."""
    members = {i: Address("127.0.0.1", ports[i - 1]) for i in (1, 2, 3)}
    config = NodeConfig(node_id, members, tmp_path / f"n{node_id}", heartbeat_interval=0.02,
                        election_timeout=0.15)
    node = Node(config, MemoryLogStore(node_id=node_id, cluster_id=config.cluster_id),
                kv.KVMachine())
    node.cut_off_after = cut_off_after
    if replica:
        node.replica_config = dataclasses.replace(node.replica_config, **replica)
    return node


@contextlib.asynccontextmanager
async def running(node: Node) -> AsyncIterator[Node]:
    """`node`, started, and stopped when the block ends."""
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def put(key: str, value: bytes, seq: int, client: str = "test") -> bytes:
    return kv.encode_request(kv.Request(client, seq, kv.Put(key, value)))


async def submit_until_ok(node: Node, command: bytes) -> Outcome:
    """Submit `command` until it succeeds: a cluster just formed may still change its
    leader, aborting a command with an unknown outcome (the KV machine de-duplicates)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 5
    while True:
        outcome = await node.submit(command, timeout=2)
        if outcome.ok or not outcome.unknown or loop.time() > give_up:
            return outcome
        await asyncio.sleep(0.05)


class Done:
    """A `done` callback that records every call and when it came."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.outcomes: list[Outcome] = []
        self.times: list[float] = []
        self.called = asyncio.Event()

    def __call__(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.times.append(self.loop.time())
        self.called.set()


def live_requests(node: Node) -> int:
    """Requests the node still keeps a deadline for."""
    return sum(len(members) for members in node._deadlines.values())


def assert_no_request_state(node: Node) -> None:
    assert node._waiters == {}
    assert live_requests(node) == 0
    assert node._gathered == []
    replica = node.replica
    assert replica is not None
    pipeline = replica.pipeline
    assert not pipeline.waiting and not pipeline.unrouted and not pipeline.queue
    assert not replica.reads.local and not replica.reads.quorum


# ------------------------------------------------------------------ deadlines


@async_test
async def test_submit_times_out_with_unknown_outcome_when_no_quorum(tmp_path: Path) -> None:
    async with running(make_node(tmp_path, 1, free_ports(3))) as node:
        loop = asyncio.get_running_loop()
        done = Done()
        started = loop.time()
        node.submit_nowait(put("k", b"v", 1), done, timeout=0.5)
        await asyncio.wait_for(done.called.wait(), 0.5 + 1.0)
        assert 0.5 - EARLY <= done.times[0] - started <= 0.5 + SLACK
        (outcome,) = done.outcomes
        assert not outcome.ok
        assert outcome.unknown
        assert outcome.error.startswith("unavailable"), outcome.error
        await asyncio.sleep(0.2)  # long past the deadline tick
        assert len(done.outcomes) == 1
        assert_no_request_state(node)
        assert node._deadlines == {}
        assert node._deadline_timer is None


@async_test
async def test_a_failing_done_callback_costs_no_other_request_its_answer(
    tmp_path: Path,
) -> None:
    async with running(make_node(tmp_path, 1, free_ports(3))) as node:
        def broken(outcome: Outcome) -> None:
            raise RuntimeError("a caller's bug")

        node.submit_nowait(put("a", b"v", 1), broken, timeout=0.3)
        done = Done()
        node.submit_nowait(put("b", b"v", 2), done, timeout=0.3)  # same deadline bucket
        later = Done()
        node.submit_nowait(put("c", b"v", 3), later, timeout=0.6)  # the timer is re-armed
        await asyncio.wait_for(later.called.wait(), 2.0)
        assert len(done.outcomes) == 1 and done.outcomes[0].error.startswith("unavailable")
        assert len(later.outcomes) == 1 and later.outcomes[0].unknown
        assert live_requests(node) == 0


@async_test
async def test_awaited_submit_without_quorum_returns_unavailable_by_its_timeout(
    tmp_path: Path,
) -> None:
    async with running(make_node(tmp_path, 1, free_ports(3))) as node:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await asyncio.wait_for(node.submit(put("k", b"v", 1), timeout=0.3), 1.5)
        assert 0.3 - EARLY <= loop.time() - started <= 0.3 + SLACK
        assert (outcome.ok, outcome.unknown) == (False, True)
        assert outcome.error.startswith("unavailable"), outcome.error
        assert_no_request_state(node)


@async_test
async def test_requests_with_different_timeouts_each_end_by_their_own(tmp_path: Path) -> None:
    async with running(make_node(tmp_path, 1, free_ports(3))) as node:
        loop = asyncio.get_running_loop()
        timeouts = [0.6, 0.2, 0.4, 0.2]  # the later deadline first: the timer is re-armed
        dones = [Done() for _ in timeouts]
        started = loop.time()
        for seq, (timeout, done) in enumerate(zip(timeouts, dones, strict=True), 1):
            node.submit_nowait(put(f"k{seq}", b"v", seq), done, timeout=timeout)
        await asyncio.wait_for(asyncio.gather(*(d.called.wait() for d in dones)), 2)
        for timeout, done in zip(timeouts, dones, strict=True):
            assert len(done.outcomes) == 1
            assert timeout - EARLY <= done.times[0] - started <= timeout + SLACK
            assert done.outcomes[0].error.startswith("unavailable")
        assert node._deadlines == {}


@async_test
async def test_read_without_quorum_is_retried_until_its_deadline_then_unavailable(
    tmp_path: Path,
) -> None:
    # The replica gives up on one linearizable read after read_timeout; the node tries again.
    async with running(make_node(tmp_path, 1, free_ports(3), read_timeout=0.1)) as node:
        assert node.replica is not None
        loop = asyncio.get_running_loop()
        attempts: list[float] = []
        replica_read = node.replica.read_many  # the driver hands reads over in batches

        def counting_read(requests: Any, now: float) -> Any:
            attempts.extend(loop.time() for _ in requests)
            return replica_read(requests, now)

        node.replica.read_many = counting_read  # type: ignore[method-assign]
        done = Done()
        started = loop.time()
        node.read_nowait(kv.encode_query("k"), "linearizable", done, timeout=0.8)
        await asyncio.wait_for(done.called.wait(), 2)
        assert 0.8 - EARLY <= done.times[0] - started <= 0.8 + SLACK
        # ~0.12 s per attempt (read_timeout + RETRY_PAUSE) within 0.8 s.
        assert len(attempts) >= 4, attempts
        assert attempts[-1] - started <= 0.8
        (outcome,) = done.outcomes
        assert not outcome.ok
        assert outcome.error.startswith("unavailable"), outcome.error
        assert "linearizable read timed out" in outcome.error  # the last attempt's failure
        count = len(attempts)
        await asyncio.sleep(0.2)
        assert len(done.outcomes) == 1
        assert len(attempts) == count  # no attempt after the request finished
        assert_no_request_state(node)


@async_test
async def test_submit_with_unknown_outcome_is_reported_at_once_and_never_resubmitted(
    tmp_path: Path,
) -> None:
    # A command whose leader lost its ballot may still be chosen: proposing it again
    # could apply it twice. The node reports it; the caller retries under its own identity.
    async with running(make_node(tmp_path, 1, free_ports(3))) as node:
        replica = node.replica
        assert replica is not None
        loop = asyncio.get_running_loop()
        proposed: list[int] = []

        def aborting_submit_many(requests: list[tuple[int, bytes]], now: float) -> Any:
            ready = LogReady()
            for rid, _ in requests:
                proposed.append(rid)
                ready.outcomes.append(
                    (rid, Outcome(False, error="aborted: ballot lost", unknown=True)))
            return ready

        replica.submit_many = aborting_submit_many  # type: ignore[method-assign]
        done = Done()
        started = loop.time()
        node.submit_nowait(put("k", b"v", 1), done, timeout=0.5)
        await asyncio.wait_for(done.called.wait(), 1.5)
        assert done.times[0] - started < 0.1
        assert done.outcomes == [Outcome(False, error="aborted: ballot lost", unknown=True)]
        await asyncio.sleep(0.6)  # past the deadline: nothing more happens
        assert len(proposed) == 1
        assert len(done.outcomes) == 1
        assert node._waiters == {} and live_requests(node) == 0


class _AbortOnceReplica:
    """Stands in for `Replica` to show what `Node.submit` does with an outcome that is
    `unknown` (the command may still be chosen, which is what `Aborted` means)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[int, bytes]] = []

    def submit(self, request_id: int, payload: bytes, now: float) -> LogReady:
        self.submitted.append((request_id, payload))
        if len(self.submitted) == 1:
            outcome = Outcome(False, error="aborted: the leader changed before it was chosen",
                              unknown=True)
        else:
            outcome = Outcome(True, b"ok", 1)
        return LogReady(outcomes=[(request_id, outcome)])

    def submit_many(self, requests: list[tuple[int, bytes]], now: float) -> LogReady:
        ready = LogReady()
        for request_id, payload in requests:
            ready.outcomes += self.submit(request_id, payload, now).outcomes
        return ready

    def cancel(self, request_id: int) -> None:
        pass


def test_awaited_submit_with_unknown_outcome_returns_it_and_never_resubmits() -> None:
    """The coroutine `Node.submit` does what `submit_nowait` does above: one request is
    one command in the log, however its outcome turns out."""

    class _Transport:
        def send(self, dst: int, data: bytes) -> None:
            pass

    async def scenario() -> tuple[Outcome, list[tuple[int, bytes]]]:
        members = {1: Address("127.0.0.1", 1)}
        node = Node(NodeConfig(1, members, Path("/nonexistent")), store=None,
                    machine=kv.KVMachine())
        fake = _AbortOnceReplica()
        node.replica = fake  # type: ignore[assignment]
        node.transport = _Transport()  # type: ignore[assignment]
        node.clock = asyncio.get_running_loop()
        outcome = await node.submit(b"inc", timeout=1.0)
        return outcome, fake.submitted

    outcome, submitted = asyncio.run(scenario())
    # An unknown outcome goes back to the caller, who retries under its own
    # identity (the key-value APIs do, with idempotency keys); nothing is resubmitted.
    assert not outcome.ok and outcome.unknown
    ids = {rid for rid, _ in submitted}
    assert len(ids) == 1, (
        f"one submit became {len(submitted)} distinct commands {sorted(ids)}; the first "
        "may still be chosen (that is what 'unknown' means), so both can be applied")


class _WholeMillisecondLoop:
    """The parts of a loop the request machinery uses, with a clock that reads whole
    milliseconds, as uvloop's does (`loop.time()` is libuv's millisecond clock)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        self.timers.append((when, callback))
        return asyncio.TimerHandle(when, callback, args, self)  # type: ignore[arg-type]

    def call_soon(self, callback: Any, *args: Any) -> None:
        pass  # the gathered command is never submitted: there is no replica here

    def _timer_handle_cancelled(self, handle: Any) -> None:
        pass

    def get_debug(self) -> bool:
        return False


def test_a_request_is_given_up_when_the_deadline_timer_fires_at_its_tick() -> None:
    """The deadline timer of a tick fires when `loop.time()` reaches the tick; the
    requests of that tick are then given up at once. (At a time of whole milliseconds,
    `floor(time / DEADLINE_TICK)` is one tick short for about a third of the ticks, so
    the bucket was kept and the timer re-armed for a moment already past: under uvloop
    the loop spun, ~140 wake-ups per tick, for each tick with a request pending.)"""
    # A tick whose time in whole milliseconds divides one short in floating point.
    ms = next(m for m in range(2000, 1_000_000, 50)
              if math.floor((m / 1000) / DEADLINE_TICK) != m // 50
              and math.ceil((m / 1000) / DEADLINE_TICK) == m // 50
              and (m / 1000 - 1.0) + 1.0 == m / 1000)
    tick_time = ms / 1000
    members = {1: Address("127.0.0.1", 1), 2: Address("127.0.0.1", 2),
               3: Address("127.0.0.1", 3)}
    node = Node(NodeConfig(1, members, Path("unused")), MemoryLogStore(node_id=1),
                kv.KVMachine())
    loop = _WholeMillisecondLoop(tick_time - 1.0)
    node.clock = loop  # type: ignore[assignment]
    outcomes: list[Outcome] = []
    node.submit_nowait(b"command", outcomes.append, timeout=1.0)  # deadline: tick_time
    assert [when for when, _ in loop.timers] == [pytest.approx(tick_time)]
    loop.now = tick_time  # the timer's moment, as the loop reports it
    node._expire()
    assert len(outcomes) == 1 and outcomes[0].error.startswith("unavailable")
    assert node._deadlines == {}


# ---------------------------------------------------------------- cancelling


@pytest.mark.parametrize("when", ["at_once", "after_it_reached_the_replica"])
@async_test
async def test_cancelled_submit_is_forgotten_never_answered_and_never_proposed(
    tmp_path: Path, when: str,
) -> None:
    ports = free_ports(3)
    nodes = [make_node(tmp_path, i, ports) for i in (1, 2, 3)]
    node = nodes[0]
    await node.start()
    try:
        replica = node.replica
        assert replica is not None
        done = Done()
        request = node.submit_nowait(put("cancelled", b"v", 1), done, timeout=0.4)
        rid = request.rid
        assert rid is not None and node._waiters[rid] is request
        if when != "at_once":
            await asyncio.sleep(0.05)
            assert rid in replica.pipeline.waiting
        request.cancel()
        assert rid not in node._waiters
        assert rid not in replica.pipeline.waiting
        assert live_requests(node) == 0
        await asyncio.sleep(0.4 + SLACK)  # past its deadline
        assert done.outcomes == []
        assert_no_request_state(node)
        # Once a quorum is up, the cancelled command, never proposed, is not applied.
        for n in nodes[1:]:
            await n.start()
        assert (await submit_until_ok(node, put("after", b"x", 2))).ok
        read = await node.read(kv.encode_query("cancelled"), "linearizable", timeout=5)
        assert kv.decode_result(read.result) == kv.NotFound()
        assert done.outcomes == []
    finally:
        for n in nodes:
            await n.stop()


@async_test
async def test_cancelling_an_awaited_submit_raises_cancelled_and_the_node_keeps_serving(
    tmp_path: Path,
) -> None:
    ports = free_ports(3)
    nodes = [make_node(tmp_path, i, ports) for i in (1, 2, 3)]
    node = nodes[0]
    await node.start()
    try:
        task = asyncio.create_task(node.submit(put("k", b"v", 1), timeout=5))
        await asyncio.sleep(0.05)
        assert len(node._waiters) == 1 and live_requests(node) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_no_request_state(node)
        for n in nodes[1:]:
            await n.start()
        outcome = await submit_until_ok(node, put("k", b"w", 2))
        assert outcome.ok
        assert kv.decode_result(outcome.result) == kv.Ok(outcome.index)
        assert_no_request_state(node)
    finally:
        for n in nodes:
            await n.stop()


@async_test
async def test_cancel_after_the_outcome_is_harmless(tmp_path: Path) -> None:
    async with running(make_node(tmp_path, 1, free_ports(3))) as node:
        done = Done()
        request = node.read_nowait(kv.encode_query("k"), "stale", done, timeout=1)
        assert len(done.outcomes) == 1 and done.outcomes[0].ok
        request.cancel()
        request.cancel()
        assert len(done.outcomes) == 1
        assert_no_request_state(node)


# ------------------------------------------------------------------- shutdown


@async_test
async def test_stop_finishes_every_pending_request_once_with_shutting_down(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, 1, free_ports(3), read_timeout=0.03)
    await node.start()
    submits = [Done() for _ in range(5)]
    reads = [Done() for _ in range(5)]
    for seq, done in enumerate(submits, 1):
        node.submit_nowait(put(f"k{seq}", b"v", seq), done, timeout=5)
    for done in reads:  # retried every ~50 ms: some wait in their retry pause at stop
        node.read_nowait(kv.encode_query("k"), "linearizable", done, timeout=5)
    awaited = asyncio.create_task(node.submit(put("k", b"v", 99), timeout=5))
    await asyncio.sleep(0.2)
    assert all(not d.outcomes for d in submits + reads) and not awaited.done()
    await node.stop()
    # The commands had reached the replica, and may yet be chosen by the others; the
    # reads change nothing, so they failed for certain.
    for done in submits:
        assert done.outcomes == [SHUTTING_DOWN_UNKNOWN]
    for done in reads:
        assert done.outcomes == [SHUTTING_DOWN]
    assert await asyncio.wait_for(awaited, 1) == SHUTTING_DOWN_UNKNOWN
    assert SHUTTING_DOWN_UNKNOWN.unknown and not SHUTTING_DOWN_UNKNOWN.ok
    assert not SHUTTING_DOWN.unknown and not SHUTTING_DOWN.ok
    assert SHUTTING_DOWN.code == SHUTTING_DOWN_UNKNOWN.code == Code.SHUTTING_DOWN
    assert node._waiters == {} and live_requests(node) == 0
    await asyncio.sleep(0.2)  # no retry or deadline fires after the stop
    for done in submits + reads:
        assert len(done.outcomes) == 1
    # A request to a stopped node is answered at once, before the call returns.
    late = Done()
    node.submit_nowait(put("late", b"v", 100), late, timeout=5)
    assert late.outcomes == [SHUTTING_DOWN]  # it never reached the log: not unknown
    assert node._deadlines == {}  # and nothing armed for it
    assert node._deadline_timer is None or node._deadline_timer.cancelled()


# ---------------------------------------------------------------- a healthy cluster


@async_test
async def test_many_concurrent_submits_all_succeed_in_order_and_leave_no_state(
    tmp_path: Path,
) -> None:
    ports = free_ports(3)
    nodes = [make_node(tmp_path, i, ports) for i in (1, 2, 3)]
    for n in nodes:
        await n.start()
    try:
        first = await submit_until_ok(nodes[0], put("warm", b"up", 1))
        assert first.ok
        # At the leader: no forwarding hop for a leader change to abort.
        node = next((n for n in nodes if n.replica is not None and n.replica.is_leader),
                    nodes[0])
        count = 500
        outcomes: dict[int, list[Outcome]] = {i: [] for i in range(count)}
        order: list[int] = []
        all_done = asyncio.Event()

        def done(i: int, outcome: Outcome) -> None:
            outcomes[i].append(outcome)
            order.append(i)
            if len(order) == count:
                all_done.set()

        for i in range(count):
            node.submit_nowait(put(f"k{i}", b"v", i + 2), functools.partial(done, i),
                               timeout=5)
        assert live_requests(node) == count
        await asyncio.wait_for(all_done.wait(), 10)
        assert all(len(o) == 1 and o[0].ok for o in outcomes.values())
        indexes = [outcomes[i][0].index for i in order]
        assert indexes == sorted(indexes) and len(set(indexes)) == count
        assert indexes[0] > first.index
        # Each command applied exactly once, at the index its outcome reports.
        for i in range(count):
            assert kv.decode_result(outcomes[i][0].result) == kv.Ok(outcomes[i][0].index)
        assert node._waiters == {}
        assert live_requests(node) == 0
        # What is left is at most a few empty buckets, not one entry per request.
        assert len(node._deadlines) <= 3
        await asyncio.sleep(0.1)
        assert all(len(o) == 1 for o in outcomes.values())
    finally:
        for n in nodes:
            await n.stop()


# ----------------------------------------------------------------- DirectNode


@async_test
async def test_direct_node_submit_nowait_answers_before_returning_as_submit_does() -> None:
    commands = [put("k", b"v1", 1), put("k", b"v2", 2), put("k", b"v1", 1),
                put("big", b"x" * 100, 3)]
    by_callback, by_await = DirectNode(max_command=64), DirectNode(max_command=64)
    for command in commands:
        done = Done()
        handle = by_callback.submit_nowait(command, done, timeout=1)
        assert len(done.outcomes) == 1  # already answered
        handle.cancel()  # nothing left to cancel
        assert done.outcomes == [await by_await.submit(command, timeout=1)]
    assert by_callback.index == by_await.index == 3  # a retry takes an index, as a slot would
    query = kv.encode_query("k")
    done = Done()
    by_callback.read_nowait(query, "linearizable", done, timeout=1)
    assert done.outcomes == [await by_await.read(query, "linearizable", timeout=1)]
    assert kv.decode_result(done.outcomes[0].result) == kv.Ok(2, b"v2")


@async_test
async def test_a_stopped_node_and_a_stopped_direct_node_refuse_alike_and_definitely(
    tmp_path: Path,
) -> None:
    """One meaning of "shutting down": a request a stopped node never took reached no
    log, so it failed for certain (not unknown), whichever kind of node refused it."""
    node = make_node(tmp_path, 1, free_ports(3))
    await node.start()
    await node.stop()
    direct = DirectNode()
    await direct.start()
    await direct.stop()
    for stopped in (node, direct):
        write, read = Done(), Done()
        stopped.submit_nowait(put("k", b"v", 1), write, timeout=1)
        stopped.read_nowait(kv.encode_query("k"), "linearizable", read, timeout=1)
        assert write.outcomes == read.outcomes == [SHUTTING_DOWN], type(stopped).__name__
        assert await stopped.submit(put("k", b"v", 2), timeout=1) == SHUTTING_DOWN
    assert SHUTTING_DOWN.code == Code.SHUTTING_DOWN and not SHUTTING_DOWN.unknown


# ------------------------------------------------------------ binary protocol


async def send_frames(address: tuple[str, int], *requests: wire.ClientRequest
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"".join(wire.frame(r) for r in requests))
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> wire.ClientResponse:
    (length,) = wire.LENGTH.unpack(await reader.readexactly(4))
    return wire.response_decoder.decode(await reader.readexactly(length))


@async_test
async def test_binary_client_gets_unavailable_by_its_timeout_not_after_the_grace(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, 1, free_ports(3))
    await node.start()
    server = await serve_clients(node, "127.0.0.1", 0)
    writer = None
    try:
        loop = asyncio.get_running_loop()
        timeout = 0.4
        started = loop.time()
        reader, writer = await send_frames(
            server.sockets[0].getsockname()[:2],
            wire.ClientRequest(1, "submit", put("k", b"v", 1), timeout=timeout),
            wire.ClientRequest(2, "read", kv.encode_query("k"), "quorum", timeout=timeout),
        )
        answers: dict[int, tuple[wire.ClientResponse, float]] = {}
        for _ in range(2):
            response = await asyncio.wait_for(read_response(reader), timeout + NODE_GRACE + 1)
            answers[response.id] = (response, loop.time() - started)
        submitted, submit_after = answers[1]
        assert not submitted.ok
        assert submitted.unknown
        assert submitted.code == wire.ErrorCode.UNAVAILABLE, submitted
        assert "did not answer in time" not in submitted.error  # the node's answer
        assert timeout - EARLY <= submit_after <= timeout + SLACK
        read, read_after = answers[2]
        assert not read.ok
        assert read.code == wire.ErrorCode.UNAVAILABLE, read
        assert "did not answer in time" not in read.error
        assert timeout - EARLY <= read_after <= timeout + SLACK
        assert_no_request_state(node)
    finally:
        if writer is not None:
            writer.close()
        await close_server(server)
        await node.stop()


# ------------------------------------------------------- one node, found in review


def solo_node(tmp_path: Path, machine: Any, store: Any = None,
              metrics: Metrics | None = None) -> Node:
    """A one-member cluster: it elects itself and chooses alone."""
    config = NodeConfig(1, {1: Address("127.0.0.1", free_ports(1)[0])}, tmp_path / "solo",
                        heartbeat_interval=0.02, election_timeout=0.05)
    if store is None:
        store = MemoryLogStore(node_id=1, cluster_id=config.cluster_id)
    return Node(config, store, machine, metrics)


class Raising:
    """A state machine that raises on b"boom" and records every command applied."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply(self, command: bytes, index: int) -> bytes:
        self.applied.append(command)
        if command == b"boom":
            raise ValueError("boom")
        return b"ok " + command

    def query(self, query: bytes) -> bytes:
        return b""


@async_test
async def test_a_command_whose_apply_raises_gets_an_error_result_and_nothing_applies_twice(
    tmp_path: Path,
) -> None:
    """The contract (as in DirectNode and the simulator): every replica wraps its machine
    in SafeApply, so a raising apply is a deterministic error result, not a replica stopped
    mid-slot that would apply the slot's earlier commands again."""
    machine = Raising()
    async with running(solo_node(tmp_path, machine)) as node:
        while not (await node.submit(b"warm-up", timeout=2)).ok:
            await asyncio.sleep(0.05)
        # Gathered in one turn of the loop: one slot of three commands.
        first, boom, after = Done(), Done(), Done()
        for command, done in ((b"a", first), (b"boom", boom), (b"b", after)):
            node.submit_nowait(command, done, timeout=2)
        for done in (first, boom, after):
            await asyncio.wait_for(done.called.wait(), 3)
        last = await node.submit(b"c", timeout=2)
    assert first.outcomes[0].ok and first.outcomes[0].result == b"ok a"
    assert boom.outcomes[0].ok and boom.outcomes[0].result.startswith(ERROR_PREFIX)
    assert after.outcomes[0].ok and last.ok and last.result == b"ok c"
    assert machine.applied == [b"warm-up", b"a", b"boom", b"b", b"c"]


@async_test
async def test_a_restart_does_not_count_the_replayed_log_as_newly_chosen(
    tmp_path: Path,
) -> None:
    db = tmp_path / "solo.db"
    first = Metrics()
    node = solo_node(tmp_path, kv.KVMachine(),
                     SqliteLogStore.open(db, node_id=1, cluster_id=""), first)
    async with running(node):
        for seq in range(1, 6):
            assert (await submit_until_ok(node, put("k", b"v", seq))).ok
    assert first._per_command.chosen_commands == 5
    again = Metrics()
    node = solo_node(tmp_path, kv.KVMachine(),
                     SqliteLogStore.open(db, node_id=1, cluster_id=""), again)
    async with running(node):
        assert node.replica is not None
        replayed = node.replica.applied_index  # a last chosen record may wait for a write
        assert replayed >= 4
        assert (await submit_until_ok(node, put("k", b"w", 6))).ok
        assert node.replica.applied_index == 6
        # Counted: the commands chosen since the restart (phase 1 may choose again a slot
        # whose chosen record was not yet written), never the replayed ones.
        assert again._per_command.chosen_commands == 6 - replayed
        slots = again._per_command.chosen_slots
        assert again.registry.get_sample_value("pnyx_batch_size_count") == slots
        assert 1 <= slots <= node.replica.commit - node._replayed


def test_status_commit_index_counts_the_commands_of_every_slot_known_chosen(
    tmp_path: Path,
) -> None:
    """`commit_index` counts the commands in slots 1..commit_slot (known chosen), as
    `applied_index` counts those applied: a replica whose commit runs ahead of what it
    applied reports the two apart."""
    node = solo_node(tmp_path, kv.KVMachine())
    batch = Batch((Command(1, 1, b"a"), Command(1, 2, b"b")))
    node.replica = types.SimpleNamespace(  # type: ignore[assignment]
        role=Role.FOLLOWER, leader=2, is_leader=False, ballot=ZERO, leader_ballot=ZERO,
        commit=3, applied=1, applied_index=2,
        chosen={1: batch, 2: batch, 3: Batch((Command(2, 7, b"c"),))},
        standing=Standing.VOTER,
        log=types.SimpleNamespace(snapshot_slot=0, snapshot_index=0, snapshot_size=0,
                                  taking=0, floor=0, chosen={}),
        transfer=types.SimpleNamespace(fetch=None, holds={}, installs=0),
        configuration=genesis((1,)), configs=[genesis((1,))], progress={},
    )
    status = node.status()
    assert (status["commit_slot"], status["applied_slot"]) == (3, 1)
    assert (status["commit_index"], status["applied_index"]) == (5, 2)


# --- a member cut off answers at once -------------------------------------------------


@async_test
async def test_a_member_that_hears_no_leader_fails_what_it_holds_then_refuses_at_once(
    tmp_path: Path,
) -> None:
    # A member alone reaches no quorum: two election timeouts (0.3 s) without a leader
    # make it cut off.
    async with running(make_node(tmp_path, 1, free_ports(3), cut_off_after=2.0)) as node:
        loop = asyncio.get_running_loop()
        held, started = Done(), loop.time()
        node.submit_nowait(put("k", b"v", 1), held, timeout=5.0)
        await asyncio.wait_for(held.called.wait(), 2.0)
        # Failed when the member became cut off, not at the request's 5 s timeout.
        assert 0.3 - EARLY <= held.times[0] - started <= 0.3 + SLACK
        (outcome,) = held.outcomes
        assert outcome.code is Code.CUT_OFF and not outcome.ok
        assert not outcome.unknown  # it never left this member: it fails for certain
        assert "no leader" in outcome.error and "reaches 1 of 3" in outcome.error
        # From now on refused at once: a write and a linearizable read.
        for start in (lambda d: node.submit_nowait(put("k", b"v", 2), d, timeout=5.0),
                      lambda d: node.read_nowait(kv.encode_query("k"), "linearizable", d,
                                                 timeout=5.0)):
            done, asked = Done(), loop.time()
            start(done)
            assert done.outcomes and done.outcomes[0].code is Code.CUT_OFF
            assert done.times[0] - asked < 0.01
        # A stale read is this replica's own: still served.
        stale = await node.read(kv.encode_query("k"), "stale", timeout=1.0)
        assert stale.ok
        assert_no_request_state(node)


@async_test
async def test_a_cut_off_member_answers_http_503_at_once_with_retry_after_and_its_leader(
    tmp_path: Path,
) -> None:
    import urllib.error
    import urllib.request

    from pnyx.api.http import serve_http

    ports = free_ports(3)
    nodes = [make_node(tmp_path, i, ports, cut_off_after=2.0) for i in (1, 2)]
    nodes[0].metrics = Metrics()  # the HTTP layer counts requests
    for node in nodes:
        await node.start()
    server = await serve_http(nodes[0], "127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while nodes[0].status()["leader"] is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        leader = nodes[0].status()["leader"]
        assert leader in (1, 2)
        # The other member goes; alone, it reaches no quorum: cut off.
        survivor = nodes[0]
        await nodes[1].stop()
        while survivor._cut_off is None and loop.time() < deadline:  # as its watch saw
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{server.port}/v1/kv/k"

        def put_once() -> tuple[int, dict[str, str], dict[str, Any], float]:
            import json
            import time
            request = urllib.request.Request(url, data=b"v", method="PUT")
            began = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, dict(r.headers), {}, time.monotonic() - began
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), json.loads(e.read()), time.monotonic() - began

        status, headers, body, took = await loop.run_in_executor(None, put_once)
        assert status == 503 and took < 0.5, (status, took)  # not the 5 s request timeout
        assert headers["Retry-After"] == "1"
        error = body["error"]
        assert error["code"] == "unavailable" and error["unknown"] is False
        assert "ask another member" in error["message"]
        if leader == 2:  # the leader it followed, and where it served HTTP (none here)
            assert error["leader"] == 2 and error["leader_http"] is None
        else:  # it led itself, and knows of no leader that can serve
            assert error["leader"] is None
    finally:
        await server.close()
        await nodes[0].stop()


@async_test
async def test_a_leader_cut_off_fails_the_commands_it_proposed_as_unknown(
    tmp_path: Path,
) -> None:
    # The leader proposed the command, then lost its quorum: it may still be chosen (a
    # later leader may pick it up), so failing it must not say it failed for certain.
    ports = free_ports(3)
    nodes = [make_node(tmp_path, i, ports, cut_off_after=2.0) for i in (1, 2)]
    for node in nodes:
        await node.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not any(n.replica is not None and n.replica.is_leader for n in nodes) \
                and loop.time() < deadline:
            await asyncio.sleep(0.02)
        leader = next(n for n in nodes if n.replica is not None and n.replica.is_leader)
        other = next(n for n in nodes if n is not leader)
        await other.stop()
        done = Done()
        leader.submit_nowait(put("k", b"v", 1), done, timeout=5.0)
        await asyncio.wait_for(done.called.wait(), 3.0)  # not the 5 s timeout
        (outcome,) = done.outcomes
        assert outcome.code is Code.CUT_OFF and not outcome.ok
        assert outcome.unknown
        assert "no quorum" in outcome.error
    finally:
        for node in nodes:
            if not node.closed:
                await node.stop()

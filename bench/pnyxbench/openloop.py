"""The open-loop load: requests offered at a fixed rate, whatever the system answers.

A closed loop (`loadgen`) sends the next request only when an answer arrives,
so a slow system is offered less: it can never be overloaded, and a system
that batches only under thousands of requests in flight (PySyncObj) looks
worse than it is. Here arrivals follow a clock instead (`Pacer`: Poisson or
evenly paced), each request under a client id with nothing else in flight
(ids are pooled, so de-duplication sees increasing `seq` per id), and a
request's latency runs from the moment it was *due*, not the moment the
generator got round to sending it: a generator that falls behind shows as
latency, never as a lighter load ("coordinated omission").

A request *succeeds* if it is answered ok within `bound` seconds of being
due. The search (`pnyxbench.openrun`) looks for the highest rate at which at
least `success` (90 %) of the requests due in the measured window succeed,
as PySyncObj's own benchmark does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from array import array
from dataclasses import dataclass
from typing import Any, cast

from pnyx import wire
from pnyx.statemachine import kv
from pnyxbench.loadgen import _Conn, connect_all

# How a node's admission control words its refusal on the binary protocol (code
# `unavailable`, which every client already retries after a pause).
OVERLOADED_PREFIX = "overloaded"


class Pacer:
    """When requests are due: `rate` per second from `start`, Poisson or evenly paced.

    `due(now)` returns the arrival times up to `now` not returned before, in
    order. Pure: it reads no clock, so it can be tested on a fake one.
    """

    def __init__(self, rate: float, arrivals: str, rng: random.Random, start: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        if arrivals not in ("poisson", "paced"):
            raise ValueError(f"arrivals must be poisson or paced, not {arrivals!r}")
        self.rate = rate
        self.poisson = arrivals == "poisson"
        self.rng = rng
        self.start = start
        self.count = 0
        self.next = start + self._gap()

    def _gap(self) -> float:
        return self.rng.expovariate(self.rate) if self.poisson else 1.0 / self.rate

    def due(self, now: float) -> list[float]:
        out: list[float] = []
        if self.poisson:
            nxt = self.next
            while nxt <= now:
                out.append(nxt)
                nxt += self.rng.expovariate(self.rate)
            self.next = nxt
        else:
            # Computed from the start, not summed: no drift from adding 1/rate a million times.
            last = int((now - self.start) * self.rate)
            out = [self.start + k / self.rate for k in range(self.count + 1, last + 1)]
            self.count = max(self.count, last)
        return out


@dataclass
class OpenJob:
    """What one open-loop generator process does; plain data, so it crosses a fork."""

    slot: int
    targets: list[tuple[str, int]]
    connections: int
    rate: float  # this process's share, requests per second
    arrivals: str
    bound: float  # seconds: answered ok within this of being due is a success
    value_size: int
    keys: int
    token: str
    seed: int
    start_at: float
    measure_from: float
    end_at: float
    cacert: str | None = None
    request_timeout: float = 5.0  # what each request asks the server for


@dataclass
class OpenResult:
    due: int = 0  # requests due in the measured window
    sent: int = 0  # of those, sent by the end of the window (the generator kept up)
    ok: int = 0  # answered ok (at any latency, before the generator closed)
    in_bound: int = 0  # answered ok within the bound
    overloaded: int = 0  # refused at once with `overloaded`
    errors: int = 0  # any other failure
    unanswered: int = 0
    committed_in_window: int = 0  # ok answers that arrived in the window, whenever due
    first_error: str = ""
    latencies: bytes = b""  # array("d") of seconds, ok answers only
    lag_max: float = 0.0  # the most a batch of sends trailed its due time
    cpu: float = 0.0
    fatal: str = ""


class _Client:
    __slots__ = ("cid", "conn", "number", "sent_at", "seq")

    def __init__(self, number: int, cid: str, conn: _OpenConn) -> None:
        self.number = number
        self.cid = cid
        self.conn = conn
        self.seq = 0
        self.sent_at = 0.0


class _OpenConn(_Conn):
    """The closed loop's connection, answering with the response's code too."""

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        decode = wire.response_decoder.decode
        on_answer = cast(_OpenLoopGen, self.gen).on_response
        pending = self.pending
        self.frames.feed(data)
        try:
            for payload in self.frames.frames():
                response = decode(payload)
                client = pending.pop(response.id, None)
                if client is not None:
                    on_answer(client, response, now)  # type: ignore[arg-type]
        except wire.FrameTooLarge as exc:
            self.gen.fatal = f"{self.address[0]}:{self.address[1]} sent {exc}"
            if self.transport is not None:
                self.transport.close()


class _OpenLoopGen:
    """One generator process: a pacer, pooled client ids, its connections, its counts."""

    TICK = 0.001  # seconds between batches of sends

    def __init__(self, job: OpenJob) -> None:
        self.job = job
        self.value = os.urandom(job.value_size // 2 + 1).hex()[:job.value_size].encode()
        self.key_rng = random.Random(job.seed * 7919 + job.slot)
        self.pacer = Pacer(job.rate, job.arrivals, random.Random(job.seed * 31 + job.slot),
                           job.start_at)
        self.conns: list[_OpenConn] = []
        self.free: list[_Client] = []
        self.made = 0
        self.r = OpenResult()
        self.latencies = array("d")
        self.in_window_outstanding = 0
        self.stopping = False
        self.fatal = ""
        self.done = asyncio.get_running_loop().create_future()

    def _client(self) -> _Client:
        if self.free:
            return self.free.pop()
        self.made += 1
        return _Client(self.made, f"{self.job.token}-o{self.made}",
                       self.conns[self.made % len(self.conns)])

    def tick(self) -> None:
        job = self.job
        now = time.perf_counter()
        due = self.pacer.due(min(now, job.end_at))
        if due:
            self.r.lag_max = max(self.r.lag_max, now - due[0]) if due[0] >= job.measure_from \
                else self.r.lag_max
        for at in due:
            client = self._client()
            client.seq += 1
            client.sent_at = at
            payload = kv.encode_request(kv.Request(
                client.cid, client.seq,
                kv.Put(f"k{self.key_rng.randrange(job.keys)}", self.value)))
            client.conn.send(client, "submit", payload)  # type: ignore[arg-type]
            if job.measure_from <= at < job.end_at:
                self.r.due += 1
                self.r.sent += 1
                self.in_window_outstanding += 1
        for conn in self.conns:
            conn.flush()
        if now < job.end_at and not self.fatal:
            asyncio.get_running_loop().call_later(self.TICK, self.tick)

    def on_response(self, client: _Client, response: wire.ClientResponse, now: float) -> None:
        job = self.job
        at = client.sent_at
        self.free.append(client)
        if job.measure_from <= now < job.end_at and response.ok:
            self.r.committed_in_window += 1
        if not job.measure_from <= at < job.end_at:
            return
        self.in_window_outstanding -= 1
        # A KV-level refusal (stale seq...) is a failure too; see loadgen.on_answer.
        ok = response.ok and response.result[1:7] != b"\xa5error"
        if ok:
            self.r.ok += 1
            latency = now - at
            self.latencies.append(latency)
            if latency <= job.bound:
                self.r.in_bound += 1
        elif response.code == wire.ErrorCode.UNAVAILABLE and response.error.startswith(
                OVERLOADED_PREFIX):
            self.r.overloaded += 1
        else:
            self.r.errors += 1
            if not self.r.first_error:
                self.r.first_error = response.error or "a refusal by the machine"
        if self.in_window_outstanding == 0 and time.perf_counter() >= job.end_at \
                and not self.done.done():
            self.done.set_result(None)

    async def run(self) -> OpenResult:
        job = self.job
        refused = await connect_all(job, lambda a: _OpenConn(self, a), self.conns)  # type: ignore[arg-type]
        if refused is not None:
            return OpenResult(fatal=refused)
        await asyncio.sleep(max(0.0, job.start_at - time.perf_counter()))
        self.tick()
        await asyncio.sleep(max(0.0, job.measure_from - time.perf_counter()))
        cpu_start = time.process_time()
        while time.perf_counter() < job.end_at and not self.fatal:
            await asyncio.sleep(min(0.1, max(0.0, job.end_at - time.perf_counter())))
        self.r.cpu = time.process_time() - cpu_start
        # What is due in the window and not answered within the bound after it is a
        # failure anyway: wait that long, no longer.
        if self.in_window_outstanding and not self.fatal:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.done), job.bound)
        self.stopping = True
        self.r.unanswered = self.in_window_outstanding
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        self.r.latencies = self.latencies.tobytes()
        self.r.fatal = self.r.fatal or self.fatal
        return self.r


def open_worker_main(job: OpenJob, pipe: Any) -> None:  # pragma: no cover - a child process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ImportError):
        import uvloop  # type: ignore[import-not-found]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def go() -> OpenResult:
        return await _OpenLoopGen(job).run()

    try:
        result = asyncio.run(go())
    except Exception as exc:
        result = OpenResult(fatal=f"open-loop generator failed: {type(exc).__name__}: {exc}")
    pipe.send(result)
    pipe.close()

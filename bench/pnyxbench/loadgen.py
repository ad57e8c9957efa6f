"""The closed-loop load generator: clients with one request in flight each, in worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time
from array import array
from dataclasses import dataclass
from typing import Any, cast

from pnyx import wire
from pnyx.statemachine import kv


@dataclass
class WorkerJob:
    """What one load generator process does; plain data, so it crosses a fork or a pickle."""

    slot: int
    protocol: str
    targets: list[tuple[str, int]]
    clients: list[int]  # global client numbers
    connections: int
    value_size: int
    read_ratio: float
    read_mode: str
    keys: int
    token: str
    seed: int
    start_at: float  # time.perf_counter() values: CLOCK_MONOTONIC, the same in every process
    measure_from: float
    end_at: float
    drain: float  # seconds after end_at to wait for answers still in flight
    cacert: str | None = None  # the targets speak TLS, with certificates from this CA


@dataclass
class WorkerResult:
    ops: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: bytes = b""  # array("d") of seconds
    fatal: str = ""
    cpu: float = 0.0  # CPU seconds this process used in the measured window
    unanswered: int = 0


class _Client:
    __slots__ = ("cid", "conn", "key_rng", "number", "sent_at", "seq")

    def __init__(self, number: int, cid: str, conn: _Conn, seed: int) -> None:
        self.number = number
        self.cid = cid
        self.conn = conn
        self.seq = 0
        self.sent_at = 0.0
        self.key_rng = random.Random(seed * 1_000_003 + number)


class _Conn(asyncio.Protocol):
    """One connection of the generator: pipelined frames out, answers matched by id."""

    def __init__(self, gen: _LoadGen, address: tuple[str, int]) -> None:
        self.gen = gen
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.frames = wire.FrameDecoder(wire.MAX_FRAME)
        self.pending: dict[int, _Client] = {}
        self.out: list[bytes] = []
        self.next_id = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        if self.pending and not self.gen.stopping:
            self.gen.fatal = (f"the connection to {self.address[0]}:{self.address[1]} closed "
                              f"with {len(self.pending)} requests unanswered")

    def send(self, client: _Client, op: str, payload: bytes, mode: str = "linearizable") -> None:
        self.next_id += 1
        self.pending[self.next_id] = client
        self.out.append(wire.frame(wire.ClientRequest(self.next_id, op, payload, mode)))  # type: ignore[arg-type]

    def flush(self) -> None:
        if self.out and self.transport is not None:
            # One write per batch of answers: the generator's syscalls, like the
            # server's, are amortised over whatever arrived together.
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        decode = wire.response_decoder.decode
        on_answer = self.gen.on_answer
        pending = self.pending
        self.frames.feed(data)
        try:
            for payload in self.frames.frames():
                response = decode(payload)
                client = pending.pop(response.id, None)
                if client is not None:
                    on_answer(client, response.ok, response.error, response.result, now)
        except wire.FrameTooLarge as exc:
            self.gen.fatal = f"{self.address[0]}:{self.address[1]} sent {exc}"
            if self.transport is not None:
                self.transport.close()
            return
        self.flush()


class _LoadGen:
    """The closed loop of one generator process: clients, their connections, their numbers."""

    def __init__(self, job: WorkerJob, progress: Any) -> None:
        self.job = job
        self.progress = progress
        self.value = os.urandom(job.value_size // 2 + 1).hex()[:job.value_size].encode()
        self.latencies = array("d")
        self.ops = 0
        self.errors = 0
        self.first_error = ""
        self.fatal = ""
        self.stopping = False
        self.conns: list[_Conn] = []
        self.clients: list[_Client] = []
        self.in_window = 0  # answers counted since the last progress update
        self.idle = asyncio.get_running_loop().create_future()
        self.in_flight = 0

    def key(self, client: _Client) -> str:
        return f"k{client.key_rng.randrange(self.job.keys)}"

    def issue(self, client: _Client) -> None:
        job = self.job
        self.in_flight += 1
        if job.read_ratio and client.key_rng.random() < job.read_ratio:
            payload = kv.encode_query(self.key(client))
            client.sent_at = time.perf_counter()
            client.conn.send(client, "read", payload, job.read_mode)
            return
        client.seq += 1
        payload = kv.encode_request(kv.Request(client.cid, client.seq,
                                               kv.Put(self.key(client), self.value)))
        client.sent_at = time.perf_counter()
        client.conn.send(client, "submit", payload)

    def on_answer(self, client: _Client, ok: bool, error: str, result: bytes,
                  now: float) -> None:
        self.in_flight -= 1
        job = self.job
        # A KV-level refusal (stale seq, too large...) is an error too. Results are
        # msgpack arrays tagged by their first element; looking for the tag avoids
        # decoding every result in the generator's hot path.
        failed = not ok or result[1:7] == b"\xa5error"
        if client.sent_at >= job.measure_from and now <= job.end_at:
            if failed:
                self.errors += 1
                if not self.first_error:
                    self.first_error = error or _describe(result)
            else:
                self.ops += 1
                self.in_window += 1
                self.latencies.append(now - client.sent_at)
        if now < job.end_at:
            self.issue(client)
        elif self.in_flight == 0 and not self.idle.done():
            self.idle.set_result(None)

    def report_progress(self) -> None:
        if self.progress is not None:
            self.progress[self.job.slot] += self.in_window
        self.in_window = 0
        if not self.stopping:
            asyncio.get_running_loop().call_later(0.1, self.report_progress)

    async def run(self) -> WorkerResult:
        job = self.job
        refused = await connect_all(job, lambda a: _Conn(self, a), self.conns)
        if refused is not None:
            return WorkerResult(fatal=refused)
        for n, number in enumerate(job.clients):
            self.clients.append(_Client(number, f"{job.token}-c{number}",
                                        self.conns[n % len(self.conns)], job.seed))
        await asyncio.sleep(max(0.0, job.start_at - time.perf_counter()))
        self.report_progress()
        cpu_start: float | None = None
        for client in self.clients:
            self.issue(client)
        for conn in self.conns:
            conn.flush()
        await asyncio.sleep(max(0.0, job.measure_from - time.perf_counter()))
        cpu_start = time.process_time()
        while time.perf_counter() < job.end_at and not self.fatal:
            await asyncio.sleep(min(0.1, max(0.0, job.end_at - time.perf_counter())))
        cpu = time.process_time() - cpu_start
        if not self.fatal and self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.idle), job.drain)
        self.stopping = True
        unanswered = self.in_flight
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        if self.progress is not None:
            self.progress[job.slot] += self.in_window
        return WorkerResult(self.ops, self.errors, self.first_error,
                            self.latencies.tobytes(), self.fatal, cpu, unanswered)


async def _etcd_load(job: WorkerJob, progress: Any) -> WorkerResult:
    """The same closed loop against etcd's JSON gateway (HTTP/1.1, one request per client).

    etcd does not speak pnyx's protocol, so its numbers include HTTP and JSON
    on both sides; compare it with that in mind.
    """
    import base64

    import aiohttp

    value = base64.b64encode(os.urandom(job.value_size // 2 + 1).hex()[:job.value_size]
                             .encode()).decode()
    latencies = array("d")
    counts = {"ops": 0, "errors": 0, "window": 0}
    first_error = ""
    connector = aiohttp.TCPConnector(limit=max(job.connections, len(job.clients)))

    async def client(number: int, session: aiohttp.ClientSession) -> None:
        nonlocal first_error
        rng = random.Random(job.seed * 1_000_003 + number)
        base = "http://{}:{}".format(*job.targets[number % len(job.targets)])
        while (started := time.perf_counter()) < job.end_at:
            key = base64.b64encode(f"k{rng.randrange(job.keys)}".encode()).decode()
            if job.read_ratio and rng.random() < job.read_ratio:
                url, body = f"{base}/v3/kv/range", {"key": key}
                if job.read_mode == "stale":
                    body["serializable"] = True  # type: ignore[assignment]
            else:
                url, body = f"{base}/v3/kv/put", {"key": key, "value": value}
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    ok = r.status == 200
                    error = f"HTTP {r.status}"
            except aiohttp.ClientError as exc:
                ok, error = False, str(exc)
            now = time.perf_counter()
            if started >= job.measure_from and now <= job.end_at:
                if ok:
                    counts["ops"] += 1
                    counts["window"] += 1
                    latencies.append(now - started)
                else:
                    counts["errors"] += 1
                    first_error = first_error or error

    async def report() -> None:
        while True:
            await asyncio.sleep(0.1)
            if progress is not None:
                progress[job.slot] += counts["window"]
            counts["window"] = 0

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.sleep(max(0.0, job.start_at - time.perf_counter()))
        reporter = asyncio.ensure_future(report())
        cpu_start = time.process_time()
        await asyncio.gather(*(client(n, session) for n in job.clients))
        cpu = time.process_time() - cpu_start
        reporter.cancel()
    return WorkerResult(counts["ops"], counts["errors"], first_error, latencies.tobytes(),
                        "", cpu, 0)


def _describe(result: bytes) -> str:
    try:
        decoded = kv.decode_result(result)
    except kv.MalformedResult:
        return f"unexpected result {result[:40]!r}"
    return getattr(decoded, "message", type(decoded).__name__)


def worker_main(job: WorkerJob, progress: Any, pipe: Any) -> None:  # pragma: no cover
    # Ctrl-C goes to the whole terminal group; the benchmark stops its workers
    # itself, so they must not die with a traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ImportError):
        import uvloop  # type: ignore[import-not-found]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def go() -> WorkerResult:
        if job.protocol == "etcd":
            return await _etcd_load(job, progress)
        return await _LoadGen(job, progress).run()

    try:
        result = asyncio.run(go())
    except Exception as exc:
        result = WorkerResult(fatal=f"load generator failed: {type(exc).__name__}: {exc}")
    pipe.send(result)
    pipe.close()


async def connect_all(job: Any, protocol: Any, conns: list[Any]) -> str | None:
    """Open `job.connections` connections, round-robin over `job.targets` (TLS with
    `job.cacert`), each made by `protocol(address)` and appended to `conns`, before
    `job.start_at` (and a second more); None, or why one could not be opened."""
    loop = asyncio.get_running_loop()
    tls = None
    if job.cacert is not None:
        import ssl

        tls = ssl.create_default_context(cafile=job.cacert)
    for k in range(job.connections):
        address = job.targets[k % len(job.targets)]
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda a=address: protocol(a), *address, ssl=tls,
                                       server_hostname=address[0] if tls else None),
                max(0.1, job.start_at - time.perf_counter()) + 1.0)
        except (OSError, TimeoutError) as exc:
            return (f"cannot connect to {address[0]}:{address[1]} "
                    f"({getattr(exc, 'strerror', None) or exc})")
        conns.append(conn)
    return None

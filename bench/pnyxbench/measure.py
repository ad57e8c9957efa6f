"""One measurement: a system at one point of the curve, its CPU, memory and latencies."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pnyx import wire
from pnyx.statemachine import kv
from pnyxbench.common import CONNECT_GRACE, DEFAULT_CONNECTIONS, BenchError
from pnyxbench.config import Config, Point
from pnyxbench.loadgen import WorkerJob, WorkerResult, worker_main
from pnyxbench.processes import TLS_CA, Processes, Running, connect


@dataclass
class Measurement:
    """One system at one point in one round."""

    system: str
    kind: str
    nodes: int
    round: int
    clients: int
    value_size: int
    read_ratio: float
    probe: bool
    seconds: float
    ops: int
    errors: int
    first_error: str
    unanswered: int
    loadgen_cpu: float  # share of one core, summed over the generator's processes
    server_cpu: dict[str, float]  # node id -> share of one core in the measured window
    leader: int
    latencies: array = field(default_factory=lambda: array("d"), repr=False)  # type: ignore[type-arg]

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def measure_fsync(directory: Path, count: int = 100) -> list[float]:
    """Seconds per 4 KiB append + fdatasync in `directory`: the disk the nodes write to."""
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def prefill(running: Running, keys: int, value_size: int, token: str) -> None:
    """Write every key once, so reads find values; pipelined, blocking, from this process."""
    if running.protocol != "wire":
        return
    value = b"v" * value_size
    address = running.targets("leader")[0]
    with connect(address, timeout=30) as s:
        for start in range(0, keys, 256):
            batch = range(start, min(keys, start + 256))
            s.sendall(b"".join(
                wire.frame(wire.ClientRequest(k + 1, "submit", kv.encode_request(
                    kv.IdempotentRequest(f"{token}-fill-{k}", kv.Put(f"k{k}", value)))))
                for k in batch))
            for _ in batch:
                response = wire.response_decoder.decode(wire.read_frame(s, wire.MAX_FRAME))
                if not response.ok:
                    raise BenchError(f"{running.system.name}: prefill failed: {response.error}")


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per run otherwise."""

    def __init__(self, total_seconds: float, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = max(total_seconds, 1e-9)
        self.done = 0.0
        self.started = time.monotonic()
        self.drawn = False

    def show(self, label: str, fraction: float, rate: float, phase: str) -> None:
        if not self.tty:
            return
        overall = min(1.0, (self.done + fraction) / self.total)
        width = 24
        filled = int(width * overall)
        elapsed = time.monotonic() - self.started
        eta = elapsed / overall - elapsed if overall > 0.01 else 0.0
        line = (f"  [{'#' * filled}{'.' * (width - filled)}] {overall:4.0%}  {label}  "
                f"{phase} {rate:>9,.0f} ops/s  ETA {_duration(eta)} ")
        self.stream.write("\r" + line[:shutil.get_terminal_size().columns - 1])
        self.stream.flush()
        self.drawn = True

    def note(self, line: str, tty_only: bool = False) -> None:
        if tty_only and not self.tty:
            return
        if self.drawn:
            self.stream.write("\r\033[K")
            self.drawn = False
        self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def measure(running: Running, point: Point, cfg: Config, procs: Processes, rnd: int,
            progress: Progress, label: str, duration: float, warmup: float,
            token: str) -> Measurement:
    """Drive `running` at `point` with the generator processes; one `Measurement`."""
    s = running.system
    nprocs = min(cfg.procs, point.clients)
    shares = [list(range(k, point.clients, nprocs)) for k in range(nprocs)]
    targets = running.targets(cfg.target)
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    counter = ctx.Array("q", nprocs, lock=False)
    start_at = time.perf_counter() + CONNECT_GRACE
    measure_from = start_at + warmup
    end_at = measure_from + duration
    drain = 5.0
    pipes = []
    for slot, share in enumerate(shares):
        connections = cfg.connections or min(len(share), DEFAULT_CONNECTIONS)
        job = WorkerJob(
            slot=slot, protocol=running.protocol, targets=targets, clients=share,
            connections=max(1, min(connections, len(share))), value_size=point.value_size,
            read_ratio=point.read_ratio, read_mode=cfg.read_mode, keys=cfg.keys,
            token=f"{token}-{slot}", seed=cfg.seed, start_at=start_at,
            measure_from=measure_from, end_at=end_at, drain=drain,
            cacert=TLS_CA.get(targets[0]))
        reader, writer = ctx.Pipe(duplex=False)
        worker = ctx.Process(target=worker_main, args=(job, counter, writer), daemon=True)
        procs.workers.append(worker)
        worker.start()
        procs.started.append(worker.pid)
        writer.close()
        pipes.append(reader)
    results: dict[int, WorkerResult] = {}
    cpu_from: dict[int, int | None] = {}
    cpu_to: dict[int, int | None] = {}
    last_count, last_time, rate = 0, time.perf_counter(), 0.0
    deadline = end_at + drain + 10.0
    while len(results) < len(pipes):
        ready = multiprocessing.connection.wait(
            [p for k, p in enumerate(pipes) if k not in results], timeout=0.2)
        for p in ready:
            k = pipes.index(p)  # type: ignore[arg-type]
            try:
                results[k] = p.recv()  # type: ignore[union-attr]
            except EOFError:
                results[k] = WorkerResult(fatal="a load generator process died")
            if results[k].fatal:
                raise BenchError(f"{s.name}: {results[k].fatal}{_node_deaths(running)}")
        now = time.perf_counter()
        if not cpu_from and now >= measure_from:
            cpu_from = {i: _cpu_ticks(p.pid) for i, p in running.procs.items()}
        if not cpu_to and now >= end_at:
            cpu_to = {i: _cpu_ticks(p.pid) for i, p in running.procs.items()}
        for i, proc in running.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{s.name}: node {i} exited during the run: "
                                 f"{running.last_line(i)}")
        count = sum(counter)
        if now - last_time >= 0.5:
            rate = (count - last_count) / (now - last_time)
            last_count, last_time = count, now
        phase = "warm-up  " if now < measure_from else "measuring"
        fraction = min(1.0, max(0.0, now - start_at) / (warmup + duration))
        progress.show(label, fraction * (warmup + duration), rate, phase)
        if now > deadline:
            raise BenchError(f"{s.name}: the load generator did not finish")
    for worker in procs.workers:
        worker.join(2)
    procs.stop_workers()
    progress.done += warmup + duration
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    server_cpu = {}
    for i in running.procs:
        a, b = cpu_from.get(i), cpu_to.get(i)
        if a is not None and b is not None:
            server_cpu[str(i)] = round((b - a) / ticks / duration, 3)
    latencies = array("d")
    for r in results.values():
        chunk = array("d")
        chunk.frombytes(r.latencies)
        latencies.extend(chunk)
    first_error = next((r.first_error for r in results.values() if r.first_error), "")
    return Measurement(
        system=s.name, kind=s.kind, nodes=s.nodes, round=rnd, clients=point.clients,
        value_size=point.value_size, read_ratio=point.read_ratio, probe=point.probe,
        seconds=duration, ops=sum(r.ops for r in results.values()),
        errors=sum(r.errors for r in results.values()), first_error=first_error,
        unanswered=sum(r.unanswered for r in results.values()),
        loadgen_cpu=round(sum(r.cpu for r in results.values()) / duration, 3),
        server_cpu=server_cpu, leader=running.leader, latencies=latencies)


def _node_deaths(running: Running) -> str:
    dead = [i for i, p in running.procs.items() if p.poll() is not None]
    if not dead:
        return ""
    return f" (node {dead[0]} exited: {running.last_line(dead[0])})"



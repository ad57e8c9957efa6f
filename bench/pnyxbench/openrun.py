"""`pnyx bench --open-loop`: fixed offered rates, the max-rate search, the overload run.

For each system (started fresh for every point, so one point's backlog never
weighs on the next), `measure_open` offers a rate for `warmup + duration`
seconds with the generator processes of `openloop` and reports what was
offered, committed, refused (`overloaded`) and how fast. `search` doubles the
rate from `--rate-start` until fewer than `--success` of the requests due in
the window succeed within `--bound`, then bisects to within 10 %; the highest
rate that passed is the system's max-rate. `--overload F` then offers F times
the first pnyx system's max-rate to every replicated system (the issue's 2x
overload run), and reports committed throughput against that max-rate, the p99 of the
writes admitted, and the nodes' largest resident memory during the run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pnyxbench.common import CONNECT_GRACE, BenchError
from pnyxbench.config import Config, System
from pnyxbench.measure import Progress, rss_mib
from pnyxbench.openloop import OpenJob, OpenResult, open_worker_main
from pnyxbench.processes import TLS_CA, Ports, Processes, Running, start_system
from pnyxbench.run import machine_info
from pnyxbench.summary import percentile


@dataclass
class OpenPoint:
    """One system offered one rate."""

    system: str
    kind: str
    rate: float  # offered, requests per second (asked of the generator)
    sent_rate: float  # what the generator sent in the window (its ceiling shows here)
    committed: float  # ok answers arriving in the window, per second
    success: float  # due in the window and answered ok within the bound
    overloaded: float  # fraction refused at once as overloaded
    errors: int
    unanswered: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    lag_max_ms: float  # how far the generator trailed its schedule at worst
    gen_cpu: float
    rss_max_mib: float | None  # the largest node's resident memory, sampled during the run
    first_error: str = ""

    def passed(self, success: float) -> bool:
        return self.success >= success


def measure_open(running: Running, rate: float, cfg: Config, procs: Processes,
                 token: str) -> OpenPoint:
    """Offer `rate` to `running` with `cfg.procs` generator processes."""
    s = running.system
    nprocs = cfg.procs
    targets = running.targets(cfg.target)
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    start_at = time.perf_counter() + CONNECT_GRACE
    measure_from = start_at + cfg.warmup
    end_at = measure_from + cfg.duration
    pipes = []
    for slot in range(nprocs):
        job = OpenJob(slot=slot, targets=targets, connections=cfg.connections or 4,
                      rate=rate / nprocs, arrivals=cfg.arrivals, bound=cfg.bound,
                      value_size=cfg.value_sizes[0], keys=cfg.keys, token=f"{token}-{slot}",
                      seed=cfg.seed, start_at=start_at, measure_from=measure_from,
                      end_at=end_at, cacert=TLS_CA.get(targets[0]))
        reader, writer = ctx.Pipe(duplex=False)
        worker = ctx.Process(target=open_worker_main, args=(job, writer), daemon=True)
        procs.workers.append(worker)
        worker.start()
        procs.started.append(worker.pid)
        writer.close()
        pipes.append(reader)
    rss_max = _RssSampler(running)
    rss_max.start()
    results: dict[int, OpenResult] = {}
    deadline = end_at + cfg.bound + 15.0
    try:
        while len(results) < len(pipes):
            ready = multiprocessing.connection.wait(
                [p for k, p in enumerate(pipes) if k not in results], timeout=0.2)
            for p in ready:
                k = pipes.index(p)  # type: ignore[arg-type]
                try:
                    results[k] = p.recv()  # type: ignore[union-attr]
                except EOFError:
                    results[k] = OpenResult(fatal="a load generator process died")
                if results[k].fatal:
                    raise BenchError(f"{s.name}: {results[k].fatal}")
            for i, proc in running.procs.items():
                if proc.poll() is not None:
                    raise BenchError(f"{s.name}: node {i} exited during the run: "
                                     f"{running.last_line(i)}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{s.name}: the open-loop generator did not finish")
    finally:
        rss_max.stop()
        procs.stop_workers()
    rs = list(results.values())
    latencies = array("d")
    for r in rs:
        chunk = array("d")
        chunk.frombytes(r.latencies)
        latencies.extend(chunk)
    ordered = sorted(latencies)
    due = sum(r.due for r in rs)
    d = cfg.duration
    return OpenPoint(
        system=s.name, kind=s.kind, rate=rate, sent_rate=sum(r.sent for r in rs) / d,
        committed=sum(r.committed_in_window for r in rs) / d,
        success=sum(r.in_bound for r in rs) / due if due else 0.0,
        overloaded=sum(r.overloaded for r in rs) / due if due else 0.0,
        errors=sum(r.errors for r in rs), unanswered=sum(r.unanswered for r in rs),
        p50_ms=percentile(ordered, 50) * 1e3, p99_ms=percentile(ordered, 99) * 1e3,
        max_ms=(ordered[-1] if ordered else 0.0) * 1e3,
        lag_max_ms=max(r.lag_max for r in rs) * 1e3,
        gen_cpu=round(sum(r.cpu for r in rs) / d, 3), rss_max_mib=rss_max.value,
        first_error=next((r.first_error for r in rs if r.first_error), ""))


class _RssSampler:
    """The largest resident memory of any node of `running`, sampled every 0.2 s."""

    def __init__(self, running: Running) -> None:
        self.pids = [p.pid for p in running.procs.values()]
        self.value: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in self.pids:
                mib = rss_mib(pid)
                if mib is not None and (self.value is None or mib > self.value):
                    self.value = mib


def _one(s: System, rate: float, cfg: Config, procs: Processes, ports: Ports, root: Path,
         progress: Progress, label: str, token: str) -> OpenPoint:
    where = root / f"{s.name}-{int(rate)}-{token[-4:]}"
    running = start_system(s, where, ports, procs, cfg.start_timeout)
    try:
        point = measure_open(running, rate, cfg, procs, token)
    finally:
        procs.stop(list(running.procs.values()))
        if not cfg.keep:
            shutil.rmtree(where, ignore_errors=True)
    progress.note(f"  {label:<10} {s.name:<18} offered {rate:>9,.0f}/s  sent "
                  f"{point.sent_rate:>9,.0f}/s  committed {point.committed:>9,.0f}/s  "
                  f"ok<{cfg.bound:g}s {point.success:6.1%}  overloaded {point.overloaded:5.1%}  "
                  f"p50 {point.p50_ms:8.1f} ms  p99 {point.p99_ms:8.1f} ms"
                  + (f"  RSS {point.rss_max_mib:.0f} MiB" if point.rss_max_mib else ""))
    return point


def search(s: System, cfg: Config, procs: Processes, ports: Ports, root: Path,
           progress: Progress, token: str) -> tuple[OpenPoint | None, list[OpenPoint]]:
    """The highest rate at which `s` passes, within 10 %: (that point, every point tried)."""
    tried: list[OpenPoint] = []
    good: OpenPoint | None = None
    bad: OpenPoint | None = None
    rate = cfg.rate_start
    n = 0
    while bad is None and rate <= cfg.rate_max:
        n += 1
        p = _one(s, rate, cfg, procs, ports, root, progress, "search", f"{token}-s{n}")
        tried.append(p)
        if p.passed(cfg.success):
            good, rate = p, rate * 2
        else:
            bad = p
    while bad is not None and (good is None or bad.rate / good.rate > 1.1):
        low = good.rate if good is not None else bad.rate / 8
        mid = (low * bad.rate) ** 0.5
        n += 1
        p = _one(s, mid, cfg, procs, ports, root, progress, "bisect", f"{token}-s{n}")
        tried.append(p)
        if p.passed(cfg.success):
            good = p
        else:
            bad = p
        if good is None and bad.rate < cfg.rate_start / 64:
            break
    return good, tried


def run_open_loop(cfg: Config, procs: Processes, progress_stream: Any = None) -> dict[str, Any]:
    """Every system: the rates given, or the max-rate search and the overload run."""
    progress = Progress(1.0, progress_stream)
    root = Path(tempfile.mkdtemp(prefix="pnyx-bench-open-", dir=cfg.data_dir))
    ports = Ports(cfg.port_base)
    token = f"o{os.getpid()}-{random.getrandbits(32):08x}"
    points: list[OpenPoint] = []
    best: dict[str, OpenPoint | None] = {}
    overload: list[OpenPoint] = []
    started = time.time()
    try:
        for rnd in range(cfg.rounds):
            for s in cfg.systems:
                t = f"{token}-r{rnd}-{s.name}"
                if cfg.rates:
                    for k, rate in enumerate(cfg.rates):
                        points.append(_one(s, rate, cfg, procs, ports, root, progress,
                                           f"round {rnd + 1}", f"{t}-{k}"))
                    continue
                good, tried = search(s, cfg, procs, ports, root, progress, t)
                points.extend(tried)
                prev = best.get(s.name)
                # Over rounds, a system's max-rate is the lower of what each round found.
                if s.name not in best or (prev is not None and
                                          (good is None or good.rate < prev.rate)):
                    best[s.name] = good
        if cfg.overload and best:
            reference = next((p for name, p in best.items() if p is not None
                              and name.startswith("pnyx")), None)
            if reference is not None:
                rate = reference.rate * cfg.overload
                for rnd in range(cfg.rounds):
                    for s in (x for x in cfg.systems if x.replicated):
                        overload.append(_one(s, rate, cfg, procs, ports, root, progress,
                                             f"{cfg.overload:g}x", f"{token}-x{rnd}-{s.name}"))
    finally:
        progress.finish()
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "mode": "open-loop",
        "config": {"systems": [s.name for s in cfg.systems], "bound_s": cfg.bound,
                   "success": cfg.success, "arrivals": cfg.arrivals, "duration": cfg.duration,
                   "warmup": cfg.warmup, "rounds": cfg.rounds, "procs": cfg.procs,
                   "connections": cfg.connections or 4, "value_size": cfg.value_sizes[0],
                   "rates": cfg.rates, "overload": cfg.overload, "target": cfg.target},
        "machine": machine_info(cfg.data_dir or Path(tempfile.gettempdir())),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "points": [asdict(p) for p in points],
        "max_rate": {name: (asdict(p) if p is not None else None) for name, p in best.items()},
        "overload_runs": [asdict(p) for p in overload],
    }


def format_open_report(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [f"pnyx bench --open-loop: {cfg['arrivals']} arrivals, {cfg['duration']:g} s "
             f"measured after {cfg['warmup']:g} s; success = answered ok within "
             f"{cfg['bound_s']:g} s of being due; {cfg['procs']} generator process(es); "
             f"{report['machine']['cpus']} CPUs shared by servers and generator", ""]
    header = (f"{'system':<20}{'offered/s':>11}{'sent/s':>11}{'committed/s':>13}"
              f"{'ok<bound':>9}{'refused':>9}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}")
    if report["max_rate"]:
        lines += ["max-rate (the highest offered rate at which "
                  f"{cfg['success']:.0%} succeed):", header, "-" * len(header)]
        for name, p in report["max_rate"].items():
            lines.append(_row(name, p))
    if report["overload_runs"]:
        lines += ["", f"overload: {cfg['overload']:g}x the first pnyx system's max-rate:",
                  header, "-" * len(header)]
        for p in report["overload_runs"]:
            ref = report["max_rate"].get(p["system"])
            extra = ""
            if ref:
                extra = (f"  committed {p['committed'] / ref['committed']:.2f}x its max-rate's;"
                         f" p99 {p['p99_ms'] / max(ref['p99_ms'], 1e-9):.2f}x")
            lines.append(_row(p["system"], p) + extra)
    if cfg["rates"]:
        lines += ["every point:", header, "-" * len(header)]
        lines += [_row(p["system"], p) for p in report["points"]]
    errors = {p["system"]: p["first_error"] for p in report["points"] if p["first_error"]}
    for name, e in errors.items():
        lines.append(f"  {name}: first error: {e[:200]}")
    return "\n".join(lines)


def _row(name: str, p: dict[str, Any] | None) -> str:
    if p is None:
        return f"{name:<20}  (no rate passed)"
    rss = f"{p['rss_max_mib']:.0f}" if p["rss_max_mib"] else "-"
    return (f"{name:<20}{p['rate']:>11,.0f}{p['sent_rate']:>11,.0f}{p['committed']:>13,.0f}"
            f"{p['success']:>9.1%}{p['overloaded']:>9.1%}{p['p50_ms']:>9.1f}{p['p99_ms']:>9.1f}"
            f"{rss:>9}")

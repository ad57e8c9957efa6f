"""A whole run: every system in every round, alternated, and the summaries."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pnyxbench.common import BenchError
from pnyxbench.config import Config, Point, System, check_available
from pnyxbench.measure import (
    Measurement,
    Progress,
    measure,
    measure_fsync,
    prefill,
    rss_mib,
)
from pnyxbench.processes import (
    Ports,
    Processes,
    Running,
    _port_free,
    node_status,
    start_system,
)
from pnyxbench.report import ratios, targets
from pnyxbench.summary import percentile, size_text, summarize


def run_benchmark(cfg: Config, procs: Processes, progress_stream: Any = None) -> dict[str, Any]:
    """Run every round; the report as a JSON-able dict. Raises `BenchError`."""
    systems = list(cfg.systems)
    if cfg.ceiling and not any(s.kind == "trivial" for s in systems):
        systems.insert(0, System("trivial", "trivial"))
        check_available(systems[0])
    points = cfg.points()
    probe_kinds = {"pnyx", "trivial"} if cfg.probe else set()
    probe_point = Point(1, cfg.value_sizes[0], 0.0, probe=True)
    probe_duration, probe_warmup = min(cfg.duration, 3.0), min(cfg.warmup, 0.5)
    needs_probe = cfg.probe and any(s.kind == "pnyx" for s in systems) and not (
        1 in cfg.clients and 0.0 in cfg.read_ratios)
    per_round = sum(len(points) * (cfg.warmup + cfg.duration)
                    + ((probe_warmup + probe_duration)
                       if needs_probe and s.kind in probe_kinds else 0)
                    for s in systems)
    progress = Progress(per_round * cfg.rounds, progress_stream)
    # Before the scratch directory exists, so that a refusal leaves nothing behind.
    _check_before_starting(cfg, systems)
    root = (Path(tempfile.mkdtemp(prefix="pnyx-bench-", dir=cfg.data_dir))
            if cfg.data_dir is None or cfg.data_dir.exists()
            else _mkdir(cfg.data_dir))
    ports = Ports(cfg.port_base)
    token = f"b{os.getpid()}-{random.getrandbits(32):08x}"
    measurements: list[Measurement] = []
    memory: dict[str, dict[str, float]] = {}
    commands: dict[str, int] = {}
    fsync: list[float] = []
    started = time.time()
    try:
        for rnd in range(cfg.rounds):
            if cfg.probe:
                fsync.extend(measure_fsync(root))
            # Rotate the order each round, so no system always runs first (cold) or last.
            order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
            for s in order:
                where = root / f"round{rnd + 1}-{s.name}"
                progress.note(f"  round {rnd + 1}/{cfg.rounds}: starting {s.name}", tty_only=True)
                running = start_system(s, where, ports, procs, cfg.start_timeout)
                try:
                    filled: set[int] = set()
                    runs = [(p, cfg.duration, cfg.warmup) for p in points]
                    if needs_probe and s.kind in probe_kinds:
                        runs.append((probe_point, probe_duration, probe_warmup))
                    for point, duration, warmup in runs:
                        if point.read_ratio > 0 and point.value_size not in filled:
                            prefill(running, cfg.keys, point.value_size, token)
                            filled.add(point.value_size)
                        label = (f"round {rnd + 1}/{cfg.rounds} {s.name:<14} "
                                 f"{_point_label(point)}")
                        # Fresh client ids for every measurement: a client id whose seq
                        # started over would be refused as stale by de-duplication.
                        m = measure(running, point, cfg, procs, rnd + 1, progress, label,
                                    duration, warmup, f"{token}-m{len(measurements)}")
                        measurements.append(m)
                        progress.note(f"  {label}  {m.throughput:>10,.0f} ops/s  "
                                      f"p50 {percentile(sorted(m.latencies), 50) * 1e3:.2f} ms  "
                                      f"p99 {percentile(sorted(m.latencies), 99) * 1e3:.2f} ms"
                                      + (f"  {m.errors} errors" if m.errors else ""))
                    _note_memory(running, memory, commands)
                finally:
                    procs.stop(list(running.procs.values()))
                    if not cfg.keep:
                        shutil.rmtree(where, ignore_errors=True)
    finally:
        progress.finish()
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    summaries = summarize(measurements, memory, commands)
    fsync.sort()
    report: dict[str, Any] = {
        "config": _config_json(cfg),
        "machine": machine_info(cfg.data_dir or Path(tempfile.gettempdir())),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "fsync_ms": {"p50": percentile(fsync, 50) * 1e3, "p90": percentile(fsync, 90) * 1e3,
                     "samples": len(fsync)} if fsync else None,
        "summaries": [{**asdict(x), "spread": round(x.spread, 4)} for x in summaries],
        "measurements": [{k: v for k, v in asdict(m).items() if k != "latencies"}
                         for m in measurements],
    }
    report["pids"] = list(procs.started)
    report["ratios"] = ratios(summaries)
    report["targets"] = targets(summaries, report["fsync_ms"])
    if cfg.keep:
        report["data_dir"] = str(root)  # logs and data of every node, for a post-mortem
    return report


def _ports_needed(s: System) -> int:
    return {"wire": 0, "trivial": 1}.get(s.kind, 2 * s.nodes)


def _check_before_starting(cfg: Config, systems: list[System]) -> None:
    """Find a port in use or a server that is not there before anything starts."""
    if cfg.port_base is not None:
        last = cfg.port_base + cfg.rounds * sum(_ports_needed(s) for s in systems)
        if last > 65536:
            raise BenchError(f"--port-base {cfg.port_base} leaves too few ports "
                             f"({last - cfg.port_base} needed)")
        for port in range(cfg.port_base, last):
            if not _port_free(port):
                raise BenchError(f"port {port} on 127.0.0.1 is in use "
                                 "(choose another --port-base)")
    for s in systems:
        if s.kind == "wire":
            assert s.address is not None
            try:
                node_status(s.address)
            except OSError as exc:
                raise BenchError(f"{s.name}: nothing answers at {s.address[0]}:"
                                 f"{s.address[1]} ({getattr(exc, 'strerror', None) or exc})"
                                 ) from None


def _mkdir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--data-dir {path} cannot be made: {exc.strerror}") from None
    return path


def _note_memory(running: Running, memory: dict[str, dict[str, float]],
                 commands: dict[str, int]) -> None:
    """Resident memory per node and commands applied, at the end of the system's run."""
    name = running.system.name
    for i, proc in running.procs.items():
        mib = rss_mib(proc.pid)
        if mib is not None:
            # The largest seen over the rounds: what a node needed at worst.
            memory.setdefault(name, {})[str(i)] = max(memory.get(name, {}).get(str(i), 0), mib)
    if running.protocol == "wire":
        with contextlib.suppress(OSError, ValueError):
            status = node_status(running.clients[running.leader])
            if status and isinstance(status.get("applied_index"), int):
                commands[name] = max(commands.get(name, 0), status["applied_index"])


def _point_label(p: Point) -> str:
    reads = "writes" if p.read_ratio == 0 else f"{p.read_ratio:.0%} reads"
    return f"{p.clients:>3} clients {size_text(p.value_size):>6} {reads}" + (" (probe)" if p.probe
                                                                         else "")


def _config_json(cfg: Config) -> dict[str, Any]:
    d = asdict(cfg)
    d["systems"] = [s.name for s in cfg.systems]
    d["data_dir"] = str(cfg.data_dir) if cfg.data_dir else None
    return d


def _filesystem(path: Path) -> str:
    """The filesystem type holding `path` (from /proc/mounts), or "unknown"."""
    try:
        target = path.resolve()
        best, kind = "", "unknown"
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1] if len(parts) >= 3 else ""
                if mount and str(target).startswith(mount) and len(mount) > len(best):
                    best, kind = parts[1], parts[2]
        return kind
    except OSError:
        return "unknown"


def machine_info(data: Path) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "data_filesystem": _filesystem(data),
        "note": "servers and the load generator share these CPUs",
    }



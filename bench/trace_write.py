"""Where one write's time goes: a timeline of the leader's and followers' events.

Run by hand (not a test):

    .venv/bin/python bench/trace_write.py [--clients 1] [--duration 3] [--no-fsync]

It runs `pnyx bench --systems pnyx3` (three `pnyx serve` processes on
127.0.0.1 and its load generator) with a tracer injected into each node
through a `sitecustomize` module on `PYTHONPATH`. The tracer wraps five
methods of the node runtime and notes the monotonic time of each call (the
same clock in every process on Linux), and each node writes its notes when it
exits:

- `client-in`: a client's request frame reached the leader's binary port;
- `peerflush->N`: queued peer messages were written to node N's socket;
- `in:TYPE` / `done:TYPE`: the replica started / finished handling a message;
- `disk-start` / `disk-end`: a group commit of the log (SQLite, fsync);
- `client-out`: answers were written to a client's socket;
- `propose` / `learn`: the leader proposed a slot / a replica learned one chosen
  (and `slot:TYPE`, a message's slot and sender, before its `in:TYPE`).

For each write it takes the leader's `client-in` as time zero and prints the
median offset of the 1st, 2nd and 3rd occurrence of each event, over the last
`--last` writes: what happens in what order, and what takes long. With
`--stalls N`, each node's N longest log writes and message handlings (what
holds a node up: a compaction, a checkpoint, applying a large batch). Then, to
tell the disk's part from the node's: a probe of `pwrite` + `fdatasync` of
8 KiB by 1, 2 and 3 processes in lock-step (each step starts together, as
the three nodes' writes of one slot do), first appending to the file, then
overwriting it (as SQLite's write-ahead log does once it has wrapped). Each
node's log-write cadence follows; with `--slots`, each slot's way at the leader,
step by step from its proposal (at many clients, where one write's span is too
short to hold the steps of the slot that carries it); `--keep DIR` keeps the traces.

The tracer slows each node a little (a clock read and a list append per event):
read the order and the large gaps, not the last microsecond.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The tracer, installed in every process that has PNYX_TRACE_DIR set. Each wrapped
# method is looked up first, so a renamed one fails the run loudly instead of tracing
# nothing.
SITECUSTOMIZE = '''
import atexit, os, time

def _install(out_dir):
    import pnyx.api.binary as binary
    import pnyx.node.runtime as runtime
    import pnyx.node.transport as transport
    import pnyx.wire.stream as stream
    notes = []
    note = notes.append
    clock = time.perf_counter

    def wrap(owner, name, make):
        original = getattr(owner, name)
        setattr(owner, name, make(original))

    def deliver(original):
        def traced(self, message):
            kind = type(message).__name__
            slot = getattr(message, "slot", None)
            if slot is not None:
                note((clock(), f"slot:{kind} {slot} {message.src}"))
            note((clock(), "in:" + kind))
            original(self, message)
            note((clock(), "done:" + kind))
        return traced

    def peer_flush(original):
        def traced(self, peer):
            queued = len(peer.queue)
            original(self, peer)
            if queued:
                note((clock(), f"peerflush->{peer.node_id}"))
        return traced

    def disk(original):
        def traced(self, records):
            note((clock(), "disk-start"))
            try:
                original(self, records)
            finally:
                note((clock(), "disk-end"))
        return traced

    def client_in(original):
        def traced(self, view):
            note((clock(), "client-in"))
            return original(self, view)
        return traced

    def client_out(original):
        def traced(self):
            pending = len(self._out)
            original(self)
            if pending:
                note((clock(), "client-out"))
        return traced

    def propose(original):
        def traced(self, slot, value, now):
            note((clock(), f"propose {slot} {len(value.commands)}"))
            return original(self, slot, value, now)
        return traced

    def learn(original):
        def traced(self, slot, value, ballot=None):
            note((clock(), f"learn {slot}"))
            return original(self, slot, value, ballot)
        return traced

    import pnyx.protocol.multipaxos.log as replica_log
    import pnyx.protocol.multipaxos.pipeline as pipeline
    wrap(pipeline.Pipeline, "propose", propose)
    wrap(replica_log.Log, "learn", learn)
    wrap(runtime.Driver, "deliver", deliver)
    wrap(transport.PeerTransport, "_flush", peer_flush)
    wrap(runtime.AsyncioDisk, "_append", disk)
    wrap(binary._ClientConnection, "frame_received", client_in)
    wrap(stream.FramedProtocol, "flush", client_out)

    def dump():
        if not notes:
            return
        with open(os.path.join(out_dir, f"node-{os.getpid()}.txt"), "w") as f:
            for t, what in notes[-200_000:]:
                f.write(f"{t:.7f} {what}\\n")
    atexit.register(dump)

if os.environ.get("PNYX_TRACE_DIR"):
    _install(os.environ["PNYX_TRACE_DIR"])
'''

EVENTS = ("client-in", "peerflush", "in:Accept", "done:Accept", "disk-start", "disk-end",
          "in:Accepted", "done:Accepted", "client-out")


def run_traced(args: argparse.Namespace, trace_dir: Path, site_dir: Path) -> str:
    (site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    system = "pnyx3-nofsync" if args.no_fsync else "pnyx3"
    env = {**os.environ, "PNYX_TRACE_DIR": str(trace_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(HERE), str(site_dir)])}
    out = subprocess.run(
        [sys.executable, "-m", "pnyxbench", "--systems", system, "--clients", str(args.clients),
         "--duration", str(args.duration), "--warmup", "1", "--rounds", "1", "--no-ceiling",
         "--no-probe"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"pnyx bench failed:\n{out.stdout}\n{out.stderr}")
    return next((line.strip() for line in out.stdout.splitlines()
                 if line.lstrip().startswith("round")), out.stdout.strip())


def timeline(trace_dir: Path, last: int) -> list[tuple[str, str, list[float], int]]:
    """(who, event, median offset of its 1st/2nd/3rd occurrence, writes seen) per event,
    in the order of their first occurrence."""
    notes: list[tuple[float, str, str]] = []
    for path in glob.glob(str(trace_dir / "node-*.txt")):
        pid = Path(path).stem.split("-", 1)[1]
        for line in Path(path).read_text().splitlines():
            t, what = line.split(" ", 1)
            notes.append((float(t), pid, what))
    # Only the nodes: the load generator's own sockets are traced too (it shares the
    # stream code), and it handles no peer message.
    nodes = {pid for _, pid, what in notes if what.startswith("in:")}
    notes = sorted(n for n in notes if n[1] in nodes)
    arrivals: dict[str, int] = {}
    for _, pid, what in notes:
        if what == "client-in":
            arrivals[pid] = arrivals.get(pid, 0) + 1
    if not arrivals:
        raise SystemExit("no client request was traced")
    leader = max(arrivals, key=lambda p: arrivals[p])
    starts = [i for i, (_, pid, what) in enumerate(notes)
              if pid == leader and what == "client-in"]
    offsets: dict[tuple[str, str], list[list[float]]] = {}
    for a, b in zip(starts[-last - 1:-1], starts[-last:], strict=True):
        t0 = notes[a][0]
        seen: dict[tuple[str, str], list[float]] = {}
        for t, pid, what in notes[a:b]:
            kind = next((e for e in EVENTS if what == e or what.startswith(e + "->")), None)
            if kind is None:
                continue
            who = "leader" if pid == leader else "follower"
            seen.setdefault((who, kind), []).append((t - t0) * 1e6)
        for key, times in seen.items():
            offsets.setdefault(key, []).append(times)
    rows = []
    for (who, kind), writes in offsets.items():
        medians = []
        for k in range(3):
            nth = [times[k] for times in writes if len(times) > k]
            if len(nth) * 2 < len(writes):
                break  # an occurrence most writes do not have
            medians.append(statistics.median(nth))
        rows.append((who, kind, medians, len(writes)))
    rows.sort(key=lambda r: r[2][0])
    return rows


def slot_timeline(trace_dir: Path, seconds: float = 3.0) -> list[str]:
    """At the leader, per slot proposed in the last `seconds` traced: its batch, and the
    p50/p90 offset from its proposal of each step on its way (the Accept leaving, each
    follower reading it, writing its log and answering, the leader hearing each vote,
    the slot chosen, the next answers written). At many clients: whose turn a slot
    waits for."""
    nodes: dict[str, list[tuple[float, str]]] = {}
    for path in glob.glob(str(trace_dir / "node-*.txt")):
        notes = [(float(t), what) for t, what in
                 (line.split(" ", 1) for line in Path(path).read_text().splitlines())]
        if any(what.startswith("in:") for _, what in notes):
            nodes[Path(path).stem] = notes
    if not nodes:
        return []
    leader = max(nodes, key=lambda n: sum(1 for _, w in nodes[n] if w == "client-in"))

    def times(notes: list[tuple[float, str]], prefix: str) -> list[float]:
        return [t for t, what in notes if what.startswith(prefix)]

    def after(ts: list[float], t: float | None) -> float | None:
        if t is None:
            return None
        i = bisect.bisect_left(ts, t)
        return ts[i] if i < len(ts) else None

    lead = nodes[leader]
    end = lead[-1][0]
    proposed = {int(w.split()[1]): (t, int(w.split()[2])) for t, w in lead
                if w.startswith("propose ") and t > end - seconds}
    chosen = {int(w.split()[1]): t for t, w in lead if w.startswith("learn ")}
    votes: dict[int, dict[str, float]] = {}
    for t, what in lead:
        if what.startswith("slot:Accepted "):
            _, slot, src = what.split()
            votes.setdefault(int(slot), {}).setdefault(src, t)
    out_flush, answers = times(lead, "peerflush"), times(lead, "client-out")
    followers = []
    for name in sorted(nodes):
        if name != leader:
            notes = nodes[name]
            arrived = {int(w.split()[1]): t for t, w in notes if w.startswith("slot:Accept ")}
            followers.append((name, arrived, times(notes, "disk-start"),
                              times(notes, "disk-end"), times(notes, "peerflush")))
    steps: dict[str, list[float]] = {}

    def add(step: str, t: float | None, t0: float) -> None:
        if t is not None:
            steps.setdefault(step, []).append((t - t0) * 1e3)

    batches = []
    for slot, (t0, commands) in proposed.items():
        if slot not in chosen:
            continue
        batches.append(commands)
        add(f"{leader} (leader): Accept sent", after(out_flush, t0), t0)
        for name, arrived, starts, ends, flushes in followers:
            if slot in arrived:
                add(f"{name}: Accept read", arrived[slot], t0)
                start = after(starts, arrived[slot])
                add(f"{name}: log write begun", start, t0)
                done = after(ends, start)
                add(f"{name}: log write done", done, t0)
                add(f"{name}: Accepted written", after(flushes, done), t0)
        for src, t in votes.get(slot, {}).items():
            add(f"leader: the vote of member {src} read", t, t0)
        add("leader: chosen", chosen[slot], t0)
        add("leader: the next answers written", after(answers, chosen[slot]), t0)
    if not batches:
        return []

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[int(p * (len(xs) - 1))]

    lines = [f"{len(batches)} slots, commands per slot p10 {q(batches, .1):.0f} "
             f"p50 {q(batches, .5):.0f} p90 {q(batches, .9):.0f}"]
    for step, ms in sorted(steps.items(), key=lambda kv: q(kv[1], .5)):
        lines.append(f"{step:36s} p50 {q(ms, .5):6.2f}  p90 {q(ms, .9):6.2f} ms")
    return lines


def disk_cadence(trace_dir: Path, seconds: float = 3.0) -> list[tuple[str, str]]:
    """Per node, how often it wrote its log, how long a write took and how long it
    waited between writes: at many clients, whether the disk or the loop paces a slot."""
    out = []
    for path in sorted(glob.glob(str(trace_dir / "node-*.txt"))):
        notes = [(float(t), what) for t, what in
                 (line.split(" ", 1) for line in Path(path).read_text().splitlines())]
        if not any(what.startswith("in:") for _, what in notes):
            continue  # the load generator
        notes = [n for n in notes if n[0] > notes[-1][0] - seconds]
        span = notes[-1][0] - notes[0][0]
        durations: list[float] = []
        gaps: list[float] = []
        start = end = None
        for t, what in notes:
            if what == "disk-start":
                start = t
                if end is not None:
                    gaps.append(t - end)
            elif what == "disk-end" and start is not None:
                durations.append(t - start)
                end, start = t, None
        if not durations or span <= 0:
            continue
        requests = sum(1 for _, what in notes if what == "client-in")

        def ms(xs: list[float], q: float) -> float:
            return sorted(xs)[int(q * (len(xs) - 1))] * 1e3 if xs else 0.0

        out.append((Path(path).stem, (
            f"{len(durations) / span:,.0f} writes/s, busy {sum(durations) / span:.0%}, "
            f"write p50 {ms(durations, .5):.2f} p90 {ms(durations, .9):.2f} ms, "
            f"gap p50 {ms(gaps, .5):.2f} p90 {ms(gaps, .9):.2f} ms, "
            f"{requests / span:,.0f} client requests/s")))
    return out


def stalls(trace_dir: Path, top: int) -> list[tuple[str, list[tuple[float, str]]]]:
    """Per node (the leader first), its `top` longest log writes and message handlings,
    in milliseconds: what holds a node up."""
    out = []
    for path in sorted(glob.glob(str(trace_dir / "node-*.txt"))):
        notes = [line.split(" ", 1) for line in Path(path).read_text().splitlines()]
        if not any(what.startswith("in:") for _, what in notes):
            continue  # the load generator
        longest: list[tuple[float, str]] = []
        opened: dict[str, float] = {}
        for t, what in notes:
            if what in ("disk-start",) or what.startswith("in:"):
                opened[what.removeprefix("in:")] = float(t)
            elif what == "disk-end" or what.startswith("done:"):
                name = "disk-start" if what == "disk-end" else what.removeprefix("done:")
                began = opened.pop(name, None)
                if began is not None:
                    longest.append(((float(t) - began) * 1e3,
                                    "log write" if name == "disk-start" else name))
        longest.sort(reverse=True)
        clients = sum(1 for _, what in notes if what == "client-in")
        out.append((clients, Path(path).stem, longest[:top]))
    out.sort(reverse=True)
    return [(("leader " if i == 0 else "follower ") + name, rows)
            for i, (_, name, rows) in enumerate(out)]


def _lockstep(path: str, steps: int, barrier: object, results: object,
              overwrite: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if overwrite:
            os.write(fd, b"\0" * (8192 * (steps + 1)))
            os.fsync(fd)
        took = []
        for i in range(steps):
            barrier.wait()  # type: ignore[attr-defined]
            os.pwrite(fd, b"x" * 8192, i * 8192)
            started = time.perf_counter()
            os.fdatasync(fd)
            took.append(time.perf_counter() - started)
        results.put(statistics.median(took))  # type: ignore[attr-defined]
    finally:
        os.close(fd)
        os.unlink(path)


def fsync_lockstep(directory: Path, steps: int) -> list[tuple[str, int, float]]:
    rows = []
    for overwrite in (False, True):
        for writers in (1, 2, 3):
            barrier, results = mp.Barrier(writers), mp.Queue()
            procs = [mp.Process(target=_lockstep, args=(str(directory / f"probe-{writers}-{i}"),
                                                         steps, barrier, results, overwrite))
                     for i in range(writers)]
            for p in procs:
                p.start()
            medians = [results.get(timeout=120) for _ in procs]
            for p in procs:
                p.join()
            rows.append(("overwrite" if overwrite else "append", writers, max(medians)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--last", type=int, default=500, help="writes to take the medians over")
    p.add_argument("--no-fsync", action="store_true", help="trace pnyx3-nofsync instead")
    p.add_argument("--probe-steps", type=int, default=400,
                   help="fdatasyncs per process in the lock-step probe (0: skip it)")
    p.add_argument("--stalls", type=int, default=0, metavar="N",
                   help="also print each node's N longest log writes and message handlings")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the probe writes (default: a temporary directory)")
    p.add_argument("--slots", action="store_true",
                   help="also print each slot's way at the leader (for many clients)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="write the nodes' traces to DIR and keep them")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir, site_dir = args.keep or Path(tmp) / "trace", Path(tmp) / "site"
        trace_dir.mkdir(parents=True, exist_ok=True)
        site_dir.mkdir()
        print(run_traced(args, trace_dir, site_dir))
        print(f"median offsets from the request's arrival at the leader, last {args.last} "
              "writes (of an event's 1st, 2nd and 3rd occurrence in that write's span):")
        for who, kind, medians, n in timeline(trace_dir, args.last):
            nth = "".join(f"{m:8.0f}" for m in medians)
            print(f"  {who:8s} {kind:14s}{nth:24s} µs   ({n} writes)")
        if args.slots:
            print("per slot at the leader, offsets from its proposal (node-PID names):")
            for line in slot_timeline(trace_dir):
                print(f"  {line}")
        print("each node's log writes over the last 3 s traced:")
        for name, line in disk_cadence(trace_dir):
            print(f"  {name}: {line}")
        if args.stalls:
            print(f"each node's {args.stalls} longest log writes and message handlings (ms):")
            for name, rows in stalls(trace_dir, args.stalls):
                print(f"  {name}: " + ", ".join(f"{ms:.1f} {what}" for ms, what in rows))
        if args.probe_steps:
            print("pwrite + fdatasync of 8 KiB, processes in lock-step (slowest median):")
            for mode, writers, median in fsync_lockstep(args.dir or Path(tmp), args.probe_steps):
                print(f"  {mode:9s} {writers} process(es)  {median * 1e3:.3f} ms")


if __name__ == "__main__":
    main()

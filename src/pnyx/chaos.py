"""Chaos runs against a real cluster: clients, a nemesis, and the verdict on what they saw.

This module owns one run: concurrent clients (`pnyx.Client`, HTTP, every node as an
endpoint) write and read a few keys while a nemesis breaks the cluster in fault
windows separated by calm ones, every call recorded with its real start and end
(`pnyx.check.Recorder`). Then it heals everything, waits for every member to
apply the same log, reads every key from every member, and judges:

- **linearizable**: the history, with those final reads appended, passes
  `pnyx.check` (so every acknowledged write is in every member's state, and no
  member ever answered what a single correct store could not have);
- **durable**: every member ends at the same index, at or above the index of
  every acknowledged write, with the same value for every key;
- **available**: operations completed per second in the fault windows of each
  kind against the calm ones, and, after each heal, the time until every member
  answers a write itself (each is probed alone).

Nemeses (`NEMESES`): `none`; `kill` (SIGKILL a node, the leader every other
time; restarted at the heal); `pause` (SIGSTOP, SIGCONT); partition shapes
`minority` (followers, fewer than half, cut from the rest), `leader-alone`
(the leader and fewer than half cut from the rest), `bridge` (the leader cut
from one follower; the others see both), and `flapping` (a random one of those
shapes, cut and healed every 0.2 to 1 s). Partitions are cut by `blackhole`
routes or silent `loss` (`pnyx.netns`), so they need `Cluster(namespaces=True)`.
`pnyx chaos` (`pnyx.cli.chaos`) is the command; tests call `run`.
"""

from __future__ import annotations

import contextlib
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from pnyx.check import Cas, Get, History, Put, Recorder, check
from pnyx.check.history import Op, Status
from pnyx.netns import CutKind
from pnyx.testing import Cluster, request

SHAPES: Final = ("minority", "leader-alone", "bridge")
NEMESES: Final = ("none", "kill", "pause", *SHAPES, "flapping")
PARTITIONS: Final = (*SHAPES, "flapping")


@dataclass
class Plan:
    """What one run does. Times in seconds."""

    nemesis: str = "bridge"
    kind: CutKind = "blackhole"
    duration: float = 20.0
    clients: int = 8
    keys: int = 8
    calm: float = 2.0  # before the first fault and between faults
    fault: float = 3.0  # how long each fault lasts
    client_timeout: float = 1.5  # one attempt of a client
    call_timeout: float = 3.0  # one call, over its attempts and members
    seed: int = 0
    check_budget: float = 30.0
    # Each call starts at a member drawn at random, as behind a load balancer; else a
    # client keeps to the member that last answered it (pnyx.Client's own choice).
    balance: bool = False
    # Keys are named PREFIX + k0..: runs on one cluster use a prefix each, so each
    # run's history starts from keys that do not exist.
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.nemesis not in NEMESES:
            raise ValueError(f"nemesis must be one of {', '.join(NEMESES)}, not "
                             f"{self.nemesis!r}")
        for name in ("duration", "calm", "fault", "client_timeout", "call_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.clients < 1 or self.keys < 1:
            raise ValueError("clients and keys must be at least 1")


@dataclass
class Window:
    """A stretch of the run: calm, or a fault of some shape."""

    what: str  # "calm" or the nemesis' fault ("bridge 2|3", "kill 2", ...)
    shape: str  # "calm" or the nemesis
    start: float
    end: float = 0.0
    ops: int = 0  # operations completed ok within it

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-9)


@dataclass
class Report:
    plan: dict[str, Any]
    nodes: int
    ops: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    verdict: str = ""  # the checker's: ok, violation, unknown
    explanation: str = ""
    check_seconds: float = 0.0
    durable: bool = False
    durability: str = ""
    calm_rate: float = 0.0  # ops/s in calm windows (the first second excluded)
    fault_rate: dict[str, float] = field(default_factory=dict)  # by shape
    heal_to_serving: list[float] = field(default_factory=list)  # seconds, one per heal
    unhealed: int = 0  # heals after which some member did not serve within the bound
    windows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "ok" and self.durable

    def ratio(self, shape: str) -> float:
        return self.fault_rate.get(shape, 0.0) / self.calm_rate if self.calm_rate else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def lines(self) -> list[str]:
        p = self.plan
        out = [f"pnyx chaos: {self.nodes} nodes, nemesis {p['nemesis']}"
               + (f" ({p['kind']})" if p["nemesis"] in PARTITIONS else "")
               + f", {p['clients']} clients{' (balanced)' if p['balance'] else ''}, "
               f"{p['duration']:g} s (faults of {p['fault']:g} s "
               f"every {p['fault'] + p['calm']:g} s)"]
        out.append(f"  history: {self.ops} operations ({self.ok} ok, {self.failed} failed, "
                   f"{self.unknown} unknown): " + {
                       "ok": "linearizable",
                       "violation": "NOT LINEARIZABLE",
                       "unknown": "not decided within the checker's budget",
                   }.get(self.verdict, self.verdict) + f" (checked in {self.check_seconds:.1f} s)")
        if self.explanation:
            out += ["    " + line for line in self.explanation.splitlines()[:30]]
        out.append(f"  durability: {self.durability}")
        out.append(f"  availability: {self.calm_rate:.0f} ops/s without a fault")
        for shape, rate in self.fault_rate.items():
            out.append(f"    during {shape}: {rate:.0f} ops/s ({100 * self.ratio(shape):.0f} % "
                       "of that)")
        if self.heal_to_serving:
            heal = self.heal_to_serving
            out.append(f"  from a heal to every member serving: median "
                       f"{statistics.median(heal):.2f} s, max {max(heal):.2f} s "
                       f"({len(heal)} heals" + (f", {self.unhealed} not within the bound"
                                                if self.unhealed else "") + ")")
        out.append("verdict: " + ("PASS" if self.passed else "FAIL"))
        return out


class _Stop(Exception):
    pass


def run(cluster: Cluster, plan: Plan, *, log: Callable[[str], None] = lambda _: None,
        ) -> Report:
    """One chaos run against `cluster` (started; namespaces for partitions)."""
    if plan.nemesis in PARTITIONS and cluster.net is None:
        raise ValueError(f"nemesis {plan.nemesis} cuts the network: it needs "
                         "Cluster(namespaces=True)")
    rng = random.Random(plan.seed)
    recorder = Recorder(clock=time.monotonic)
    stop = threading.Event()
    acked: list[int] = []  # indexes of acknowledged writes
    acked_lock = threading.Lock()
    endpoints = [cluster.http_endpoint(i) for i in cluster.ids]
    threads = [threading.Thread(target=_client, name=f"chaos-client-{c}", daemon=True,
                                args=(c, endpoints, plan, recorder, stop, acked, acked_lock))
               for c in range(plan.clients)]
    windows: list[Window] = []
    heals: list[float] = []
    unhealed = 0
    began = time.monotonic()
    end = began + plan.duration
    for t in threads:
        t.start()
    try:
        windows.append(Window("calm", "calm", began))
        while time.monotonic() < end:
            _sleep_until(min(windows[-1].start + plan.calm, end))
            if time.monotonic() >= end - 0.5 or plan.nemesis == "none":
                _sleep_until(end)
                break
            now = time.monotonic()
            windows[-1].end = now
            fault_end = min(now + plan.fault, end)
            what = _fault(cluster, plan, rng, fault_end, log)
            windows.append(Window(what, plan.nemesis, now, time.monotonic()))
            healed_at = _heal(cluster)
            windows[-1].end = healed_at
            log(f"healed {what}")
            seconds, ok = _every_member_serves(cluster, healed_at, bound=10.0)
            heals.append(seconds)
            unhealed += not ok
            log(f"every member serving {seconds:.2f} s after the heal")
            windows.append(Window("calm", "calm", healed_at))
        windows[-1].end = time.monotonic()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            _heal(cluster)
        for t in threads:
            t.join(plan.call_timeout + plan.client_timeout + 5)
    history = recorder.history()
    report = Report(asdict(plan), len(cluster.ids), heal_to_serving=heals, unhealed=unhealed)
    _availability(report, history, windows, began)
    final = _final_reads(cluster, plan, acked, report)
    full = History([*history.ops, *final])
    report.ops = len(history)
    report.ok = sum(op.status is Status.OK for op in history)
    report.failed = sum(op.status is Status.FAIL for op in history)
    report.unknown = sum(op.status is Status.UNKNOWN for op in history)
    checked = time.monotonic()
    result = check(full, budget_seconds=plan.check_budget)
    report.check_seconds = time.monotonic() - checked
    report.verdict = result.verdict.value
    report.explanation = "" if result.ok else result.explanation
    return report


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


# ------------------------------------------------------------------- the clients


def _client(c: int, endpoints: list[str], plan: Plan, recorder: Recorder,
            stop: threading.Event, acked: list[int], lock: threading.Lock) -> None:
    from pnyx.client.http import Client
    from pnyx.errors import NotFound, PnyxError, PreconditionFailed, Unavailable

    rng = random.Random(plan.seed * 1000 + c)
    name = f"client-{c}"
    seen: dict[str, str | None] = {}
    with Client(endpoints, timeout=plan.client_timeout, connect_timeout=plan.client_timeout,
                retry_timeout=plan.call_timeout) as kv:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"{plan.prefix}k{rng.randrange(plan.keys)}"
            dice = rng.random()
            value = f"{c}.{n}"
            call: Put | Get | Cas
            if dice < 0.45:
                call = Put(key, value)
            elif dice < 0.55 and seen.get(key) is not None:
                call = Cas(key, seen[key], value)
            else:
                call = Get(key)
            if plan.balance:
                kv._current = rng.randrange(len(endpoints))  # a balancer's pick
            handle = recorder.invoke(name, call)
            try:
                if isinstance(call, Put):
                    index = kv.put(key, value)
                    recorder.complete(handle)
                    with lock:
                        acked.append(index)
                elif isinstance(call, Cas):
                    try:
                        index = kv.cas(key, str(call.expected), value)
                    except PreconditionFailed:
                        recorder.complete(handle, False)
                    else:
                        recorder.complete(handle, True)
                        with lock:
                            acked.append(index)
                else:
                    try:
                        got, _ = kv.get(key)
                    except NotFound:
                        recorder.complete(handle, None)
                        seen[key] = None
                    else:
                        seen[key] = got.decode()
                        recorder.complete(handle, seen[key])
            except Unavailable as exc:
                if isinstance(call, Get) or not exc.unknown:
                    recorder.fail(handle)
                else:
                    recorder.timeout(handle)
            except NotFound:
                recorder.complete(handle, False)  # a cas on a key that does not exist
            except PnyxError:
                recorder.timeout(handle)


# ------------------------------------------------------------------- the nemesis


def _roles(cluster: Cluster) -> tuple[int, list[int]]:
    """The leader (as most members see it) and the rest, among running members."""
    votes: dict[int, int] = {}
    for i in cluster.ids:
        with contextlib.suppress(OSError, ValueError, KeyError):
            s = request("GET", cluster.url(i, "/v1/status"), timeout=0.5).json()
            leader = i if s["role"] == "leader" else s["leader"]
            if leader is not None:
                votes[int(leader)] = votes.get(int(leader), 0) + 1
    leader = max(votes, key=lambda i: votes[i]) if votes else cluster.ids[0]
    return leader, [i for i in cluster.ids if i != leader]


def _cut_shape(cluster: Cluster, shape: str, kind: CutKind, rng: random.Random) -> str:
    leader, followers = _roles(cluster)
    rng.shuffle(followers)
    small = (len(cluster.ids) - 1) // 2  # the most a majority can lose
    if shape == "minority":
        alone = followers[:small]
        cluster.partition([alone, [i for i in cluster.ids if i not in alone]], kind)
        return f"{shape} {','.join(map(str, alone))}|rest"
    if shape == "leader-alone":
        alone = [leader, *followers[:small - 1]]
        cluster.partition([alone, [i for i in cluster.ids if i not in alone]], kind)
        return f"{shape} {','.join(map(str, alone))}|rest"
    cluster.cut(leader, followers[0], kind)  # bridge: the others see both
    return f"bridge {leader}-x-{followers[0]}"


def _fault(cluster: Cluster, plan: Plan, rng: random.Random, until: float,
           log: Callable[[str], None]) -> str:
    """Start the nemesis' fault and hold it until `until`; what it was."""
    nemesis = plan.nemesis
    if nemesis in ("kill", "pause"):
        leader, followers = _roles(cluster)
        victim = leader if rng.random() < 0.5 else rng.choice(followers)
        if nemesis == "kill":
            cluster.kill(victim)
        else:
            cluster.signal(victim, signal.SIGSTOP)
        what = f"{nemesis} {victim}"
        log(what)
        _sleep_until(until)
        return what
    if nemesis == "flapping":
        flips = 0
        while time.monotonic() < until:
            _cut_shape(cluster, rng.choice(SHAPES), plan.kind, rng)
            flips += 1
            _sleep_until(min(until, time.monotonic() + rng.uniform(0.2, 1.0)))
            cluster.heal()
            _sleep_until(min(until, time.monotonic() + rng.uniform(0.2, 1.0)))
        log(f"flapping: {flips} partitions")
        return f"flapping ({flips} partitions)"
    what = _cut_shape(cluster, nemesis, plan.kind, rng)
    log(what)
    _sleep_until(until)
    return what


def _heal(cluster: Cluster) -> float:
    """End every fault: mend the network, wake paused members, restart killed ones."""
    if cluster.net is not None:
        cluster.heal()
    for proc in cluster.procs.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
    healed = time.monotonic()
    for i, proc in list(cluster.procs.items()):
        if proc.poll() is not None:
            cluster.start(i, wait=False)
    return healed


def _every_member_serves(cluster: Cluster, since: float, bound: float) -> tuple[float, bool]:
    """Seconds from `since` until every member has answered a write of its own (each
    probed alone, again and again); and whether all did within `bound`."""
    served: dict[int, float] = {}

    def probe(i: int) -> None:
        n = 0
        while time.monotonic() < since + bound:
            n += 1
            with contextlib.suppress(OSError, ValueError):
                r = request("PUT", cluster.url(i, f"/v1/kv/probe-{i}"), f"{n}".encode(),
                            timeout=0.5)
                if r.status == 200:
                    served[i] = time.monotonic()
                    return
            time.sleep(0.01)

    probes = [threading.Thread(target=probe, args=(i,), daemon=True) for i in cluster.ids]
    for t in probes:
        t.start()
    for t in probes:
        t.join(bound + 2)
    if len(served) < len(cluster.ids):
        return bound, False
    return max(served.values()) - since, True


# ------------------------------------------------------------------- the verdict


def _availability(report: Report, history: History, windows: list[Window],
                  began: float) -> None:
    done = sorted(op.complete for op in history if op.status is Status.OK
                  and op.complete is not None)
    import bisect
    for w in windows:
        w.ops = bisect.bisect_left(done, w.end) - bisect.bisect_left(done, w.start)
    calm = [w for w in windows if w.shape == "calm"]
    # The first second is the clients' warm-up, not the cluster's speed.
    start = began + 1.0
    calm_ops = sum(bisect.bisect_left(done, w.end) - bisect.bisect_left(done, max(w.start, start))
                   for w in calm if w.end > start)
    calm_seconds = sum(w.end - max(w.start, start) for w in calm if w.end > start)
    report.calm_rate = calm_ops / calm_seconds if calm_seconds > 0 else 0.0
    by_shape: dict[str, list[Window]] = {}
    for w in windows:
        if w.shape != "calm":
            by_shape.setdefault(w.shape, []).append(w)
    report.fault_rate = {s: sum(w.ops for w in ws) / sum(w.seconds for w in ws)
                         for s, ws in by_shape.items()}
    report.windows = [{"what": w.what, "start": round(w.start - began, 3),
                       "end": round(w.end - began, 3), "ops": w.ops} for w in windows]


def _final_reads(cluster: Cluster, plan: Plan, acked: list[int], report: Report) -> list[Op]:
    """Once every member has applied the same log (every acknowledged write included),
    read every key from each: as operations after all others, for the checker."""
    top = max(acked, default=0)
    deadline = time.monotonic() + 30.0
    applied: dict[int, int] = {}
    while time.monotonic() < deadline:
        # A write through every member moves them all past anything still in flight.
        with contextlib.suppress(OSError, ValueError):
            request("PUT", cluster.url(cluster.ids[0], "/v1/kv/probe-final"), b"x", timeout=2.0)
        applied = {}
        for i in cluster.ids:
            with contextlib.suppress(OSError, ValueError, KeyError):
                applied[i] = int(cluster.status(i)["applied_index"])
        if len(applied) == len(cluster.ids) and len(set(applied.values())) == 1 \
                and min(applied.values()) >= top:
            break
        time.sleep(0.2)
    else:
        report.durable = False
        report.durability = (f"LOST OR STUCK: the members' applied indexes {applied} did not "
                             f"meet at or above {top}, the last acknowledged write, in 30 s")
        return []
    t = time.monotonic()
    ops: list[Op] = []
    values: dict[int, dict[str, str | None]] = {}
    n = 10**9
    for i in cluster.ids:
        values[i] = {}
        for k in range(plan.keys):
            key = f"{plan.prefix}k{k}"
            r = request("GET", cluster.url(i, f"/v1/kv/{key}?consistency=stale"), timeout=5.0)
            value = r.body.decode() if r.status == 200 else None
            if r.status not in (200, 404):
                report.durable = False
                report.durability = f"member {i} could not read {key}: {r.status}"
                return []
            values[i][key] = value
            n += 1
            ops.append(Op(n, f"final-read-{i}", Get(key), t, t + 1e-6, value))
            t += 2e-6
    agree = all(values[i] == values[cluster.ids[0]] for i in cluster.ids)
    report.durable = agree
    report.durability = (
        f"every member applied the same log, to index {applied[cluster.ids[0]]} (the last "
        f"acknowledged write: {top}), and holds the same value for every key"
        if agree else f"MEMBERS DISAGREE at the same index: {values}")
    return ops

"""`pnyx bench --open-loop`: the pacer offers the rate asked, on a fake clock and on a fake
target; answers are sorted into successes, late ones and refusals; the command's report."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from pathlib import Path

import pytest

from pnyx import wire
from pnyxbench.openloop import OVERLOADED_PREFIX, OpenJob, Pacer, _OpenLoopGen
from test_benchmark import bench

# ------------------------------------------------------------------ the pacer


@pytest.mark.parametrize("arrivals", ["paced", "poisson"])
def test_pacer_offers_the_rate_on_a_fake_clock(arrivals: str) -> None:
    pacer = Pacer(5000.0, arrivals, random.Random(7), start=100.0)
    times: list[float] = []
    now = 100.0
    while now < 110.0:  # ten seconds in steps of a millisecond or so
        now += random.Random(int(now * 1000)).uniform(0.0005, 0.002)
        times.extend(pacer.due(now))
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(100.0 < t <= now for t in times)
    expected = 5000 * (now - 100.0)
    tolerance = 0.001 if arrivals == "paced" else 0.02
    assert abs(len(times) - expected) <= tolerance * expected, (len(times), expected)


def test_paced_arrivals_are_evenly_spaced_and_poisson_ones_are_not() -> None:
    paced = Pacer(1000.0, "paced", random.Random(1), start=0.0).due(1.0)
    gaps = [b - a for a, b in itertools.pairwise(paced)]
    assert max(gaps) - min(gaps) < 1e-9
    poisson = Pacer(1000.0, "poisson", random.Random(1), start=0.0).due(1.0)
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    mean = sum(gaps) / len(gaps)
    assert 0.0009 < mean < 0.0011
    assert max(gaps) > 3 * mean  # exponential gaps: some long ones


def test_a_pacer_asked_again_for_the_same_time_gives_nothing_new() -> None:
    pacer = Pacer(100.0, "paced", random.Random(1), start=0.0)
    assert len(pacer.due(0.5)) == 50
    assert pacer.due(0.5) == [] and pacer.due(0.4) == []
    with pytest.raises(ValueError):
        Pacer(0.0, "paced", random.Random(1), start=0.0)
    with pytest.raises(ValueError):
        Pacer(10.0, "bursty", random.Random(1), start=0.0)


# ------------------------------------------------------------------ a fake target


class _Target(asyncio.Protocol):
    """Answers every request at once: ok, or every `refuse_every`-th as overloaded."""

    received: list[float]
    refuse_every = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.frames = wire.FrameDecoder(wire.MAX_FRAME)

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        out = []
        for payload in self.frames.frames():
            request = wire.request_decoder.decode(payload)
            self.received.append(time.perf_counter())
            n = len(self.received)
            if self.refuse_every and n % self.refuse_every == 0:
                out.append(wire.frame(wire.ClientResponse(
                    request.id, False, error=f"{OVERLOADED_PREFIX}: too many requests",
                    code=wire.ErrorCode.UNAVAILABLE)))
            else:
                out.append(wire.frame(wire.ClientResponse(request.id, True, b"\x92\xa2ok\x01")))
        self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def _drive(rate: float, refuse_every: int = 0) -> tuple[list[float], OpenJob, object]:
    received: list[float] = []

    def make() -> _Target:
        t = _Target()
        t.received = received
        t.refuse_every = refuse_every
        return t

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    now = time.perf_counter()
    job = OpenJob(slot=0, targets=[("127.0.0.1", port)], connections=2, rate=rate,
                  arrivals="poisson", bound=1.0, value_size=10, keys=10, token="t", seed=1,
                  start_at=now + 0.2, measure_from=now + 0.5, end_at=now + 2.5)
    result = await _OpenLoopGen(job).run()
    server.close()
    return received, job, result


def test_the_generator_offers_the_requested_rate_to_a_target() -> None:
    received, job, r = asyncio.run(_drive(2000.0))
    in_window = [t for t in received if job.measure_from <= t < job.end_at]
    # Poisson over 2 s at 2,000/s: 4,000 expected, sd 63; the tolerance is 5 sd plus
    # the few sent in the window's last tick and received after it.
    assert abs(len(in_window) - 4000) < 330, len(in_window)
    assert abs(r.due - 4000) < 330  # type: ignore[attr-defined]
    assert r.ok == r.in_bound == r.due and r.errors == r.overloaded == r.unanswered == 0  # type: ignore[attr-defined]


def test_refusals_are_counted_as_overloaded_not_as_successes() -> None:
    _, _, r = asyncio.run(_drive(1000.0, refuse_every=4))
    assert r.due > 0  # type: ignore[attr-defined]
    assert r.overloaded + r.ok == r.due  # type: ignore[attr-defined]
    assert 0.2 < r.overloaded / r.due < 0.3  # type: ignore[attr-defined]
    assert r.in_bound == r.ok and r.errors == 0  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the command


def test_open_loop_run_against_the_trivial_server(tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    result = bench("--open-loop", "--systems", "trivial", "--rate", "1000,3000",
                   "--duration", "1", "--warmup", "0.3", "--rounds", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    points = report["points"]
    assert [p["rate"] for p in points] == [1000, 3000]
    for p in points:
        assert abs(p["sent_rate"] - p["rate"]) < 0.15 * p["rate"]
        assert p["success"] > 0.99 and p["p50_ms"] <= p["p99_ms"]
    assert "offered/s" in result.stdout


def test_open_loop_search_finds_a_max_rate_no_rate_above_it_passed(tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    # The trivial server passes every rate up to --rate-start x 2^k; a bound so tight
    # that the largest rates fail ends the search in a few steps.
    result = bench("--open-loop", "--systems", "trivial", "--rate-start", "8000",
                   "--bound", "0.001", "--success", "0.5", "--duration", "0.5",
                   "--warmup", "0.2", "--rounds", "1", "--json", str(out), timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    tried = report["points"]
    assert len(tried) >= 2
    best = report["max_rate"]["trivial"]
    assert best is not None and best["success"] >= 0.5, tried
    # Every rate tried above the max-rate failed: the search never passes one by.
    above = [p for p in tried if p["rate"] > best["rate"]]
    assert above and all(p["success"] < 0.5 for p in above)
    assert "max-rate" in result.stdout


def test_open_loop_refuses_what_it_cannot_do() -> None:
    for args, words in ((["--rate", "100"], "--rate needs --open-loop"),
                        (["--open-loop", "--arrivals", "bursty"], "--arrivals"),
                        (["--open-loop", "--read-ratio", "0.5"], "writes only")):
        result = bench("--systems", "trivial", *args)
        assert result.returncode == 2 and words in result.stderr, result.stderr

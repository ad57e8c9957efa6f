"""Liveness, as the seed's "Liveness" section tells it.

Two or more proposers that retry at once can pre-empt each other for ever,
each new Prepare cancelling the other's Accept, so nothing is chosen. The
seed's remedies: randomness (here, randomized backoff before a retry) or a
distinguished proposer that is the only one to issue proposals.
"""

from __future__ import annotations

import io
import json
import statistics

from pnyx.protocol.synod import (
    RetryPolicy,
)
from pnyx.sim import SimConfig, SimResult, simulate
from pnyx.sim.network import NetworkConfig

SEEDS = range(40)
BOUND = 2.0  # seconds of virtual time; a healthy run decides in tens of milliseconds


def duel(seed: int, *, randomized: bool, distinguished: int | None = None) -> SimResult:
    """Five proposers, all starting within 10 ms, on a loss-free network."""
    return simulate(
        SimConfig(
            seed=seed,
            nodes=5,
            proposers=5,
            network=NetworkConfig(min_delay=0.001, max_delay=0.005, jitter=0.003),
            propose_within=0.01,
            retry=RetryPolicy(randomized=randomized),
            distinguished=distinguished,
            max_time=BOUND,
        )
    )


def test_dueling_proposers_without_backoff_livelock() -> None:
    """Seed, 'Liveness': proposers issuing ever higher numbers, none ever chosen."""
    results = [duel(seed, randomized=False) for seed in SEEDS]
    stuck = [r for r in results if not r.decided]
    assert all(r.safe for r in results)
    assert len(stuck) >= len(results) // 2, f"only {len(stuck)} of {len(results)} livelocked"
    # Livelock is not silence: they are busy pre-empting each other the whole time.
    assert min(r.sent for r in stuck) > 1000


def test_randomized_backoff_resolves_the_duel() -> None:
    """Seed, 'Liveness': electing needs randomness or real time; here, random backoff."""
    results = [duel(seed, randomized=True) for seed in SEEDS]
    assert all(r.safe and r.decided for r in results)
    assert statistics.median(r.chosen_at for r in results if r.chosen_at) < 0.1


def test_a_distinguished_proposer_resolves_the_duel_even_without_backoff() -> None:
    """Seed, 'Liveness': a distinguished proposer is the only one to issue proposals;
    the others' values reach it (writes to any member) and it succeeds."""
    results = [duel(seed, randomized=False, distinguished=1) for seed in SEEDS]
    assert all(r.safe and r.decided for r in results)
    assert all(r.all_learned_at is not None for r in results)
    assert all(r.chosen in r.proposals.values() for r in results)
    # One proposer means no pre-emption: a handful of messages per process, not thousands.
    assert max(r.sent for r in results) < 20 * 5


def test_only_the_distinguished_proposer_sends_prepare() -> None:
    sink = io.BytesIO()
    simulate(
        SimConfig(seed=3, nodes=5, proposers=5, distinguished=2,
                  retry=RetryPolicy(randomized=False)),
        trace_sink=sink,
    )
    events = [json.loads(line) for line in sink.getvalue().splitlines()]
    senders = {e["msg"]["src"] for e in events if e["ev"] == "send" and e["msg"]["type"] in
               ("prepare", "accept")}
    forwards = {e["msg"]["src"] for e in events if e["ev"] == "send"
                and e["msg"]["type"] == "forward"}
    assert senders == {2}
    assert forwards == {1, 3, 4, 5}

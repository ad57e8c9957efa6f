"""Mutation guards: the simulator must catch every deliberately broken protocol.

Each mutant in `pnyx.sim.mutants` breaks one rule of the seed. A simulator
that finds nothing wrong with a broken protocol proves nothing, so each must
be caught within a bounded number of seeds under the standard fault mix.
"""

from __future__ import annotations

import pytest

from pnyx.sim import SimConfig, simulate
from pnyx.sim.faults import FaultConfig
from pnyx.sim.invariants import A1, A2, A3, B1, S1, S3
from pnyx.sim.mutants import MUTANTS
from pnyx.sim.network import NetworkConfig

BOUND = 100  # seeds within which each mutant must be caught

# The rule we expect each mutant to break first; others may follow.
EXPECTED = {
    "acceptor-ignores-promise": {A1, S1},
    "proposer-ignores-accepted": {S1},
    "learner-trusts-minority": {S3},
    "acceptor-replies-before-durable": {A2, S1},
    "acceptor-compares-rounds": {A1, A2, A3, S1},
    "round-not-saved-before-use": {B1},
}


def config(seed: int, mutant: str | None) -> SimConfig:
    return SimConfig(
        seed=seed,
        nodes=3 + seed % 5,
        proposers=3,
        network=NetworkConfig(drop=0.2, duplicate=0.05),
        faults=FaultConfig(partitions=True, crashes=True),
        mutant=mutant,
    )


def first_caught(mutant: str) -> tuple[int, set[str]] | None:
    for seed in range(BOUND):
        result = simulate(config(seed, mutant))
        if not result.safe:
            return seed, {v.rule for v in result.violations}
    return None


def test_every_mutant_has_an_expectation() -> None:
    assert set(EXPECTED) == set(MUTANTS)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught_within_bound(mutant: str) -> None:
    caught = first_caught(mutant)
    assert caught is not None, f"{mutant} survived {BOUND} seeds: the checks are too weak"
    _, rules = caught
    assert rules & EXPECTED[mutant], f"{mutant} caught by {rules}, expected {EXPECTED[mutant]}"


def test_the_correct_protocol_passes_the_same_seeds() -> None:
    """The guard is only meaningful if the unbroken protocol survives the same runs."""
    for seed in range(BOUND):
        result = simulate(config(seed, None))
        assert result.safe, (seed, result.violations)

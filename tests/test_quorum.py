"""Quorum systems: majorities, Flexible Paxos sizes, and the intersection that makes
Paxos safe (seed, 'Choosing a value': "a set S consisting of a majority of acceptors")."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnyx.protocol import QuorumError, QuorumSystem

MAJORITY = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 4}


def subsets(ids: tuple[int, ...]) -> list[frozenset[int]]:
    return [frozenset(c) for r in range(len(ids) + 1) for c in itertools.combinations(ids, r)]


def valid_sizes(n: int) -> list[tuple[int, int]]:
    return [(q1, q2) for q1 in range(1, n + 1) for q2 in range(1, n + 1) if q1 + q2 > n]


@pytest.mark.parametrize("n", range(1, 8))
def test_majority_sizes(n: int) -> None:
    """A majority of n is floor(n/2)+1 for both phases: the smallest size two of which
    always overlap."""
    qs = QuorumSystem.majority(range(10, 10 + n))
    assert (qs.phase1, qs.phase2) == (MAJORITY[n], MAJORITY[n])
    assert 2 * qs.phase1 > n >= 2 * (qs.phase1 - 1)
    assert qs.acceptors == tuple(range(10, 10 + n))


def test_majority_sorts_acceptor_ids() -> None:
    assert QuorumSystem.majority({5, 1, 3}).acceptors == (1, 3, 5)


@pytest.mark.parametrize("n", range(1, 7))
def test_flexible_sizes_accepted_when_they_exceed_n(n: int) -> None:
    """Flexible Paxos: any phase-1/phase-2 sizes with q1 + q2 > n are a valid system."""
    for q1, q2 in valid_sizes(n):
        qs = QuorumSystem.flexible(range(n), q1, q2)
        assert (qs.phase1, qs.phase2) == (q1, q2)


@pytest.mark.parametrize("n", range(1, 7))
def test_flexible_sizes_refused_when_they_do_not_exceed_n(n: int) -> None:
    """Flexible Paxos: q1 + q2 <= n would let a new proposer miss a chosen value; it is
    refused with a QuorumError naming both sizes and n."""
    for q1 in range(1, n + 1):
        for q2 in range(1, n + 1 - q1):
            assert q1 + q2 <= n
            with pytest.raises(QuorumError) as err:
                QuorumSystem.flexible(range(n), q1, q2)
            message = str(err.value)
            assert f"phase-1 quorum {q1}" in message
            assert f"phase-2 quorum {q2}" in message
            assert f"exceed {n}" in message


@pytest.mark.parametrize(("q1", "q2"), [(0, 3), (3, 0), (4, 3), (3, 4), (-1, 3), (3, -2)])
def test_sizes_out_of_range_refused(q1: int, q2: int) -> None:
    """A quorum size must lie in 1..n; the error says which phase and the range."""
    with pytest.raises(QuorumError, match=r"quorum size -?\d+ is outside 1\.\.3"):
        QuorumSystem.flexible((1, 2, 3), q1, q2)


def test_duplicate_ids_refused() -> None:
    """Acceptor ids must be distinct, or one acceptor would count twice toward a quorum."""
    with pytest.raises(QuorumError, match="distinct"):
        QuorumSystem.majority([1, 2, 2])
    with pytest.raises(QuorumError, match="distinct"):
        QuorumSystem.flexible([1, 1, 2, 3], 3, 2)
    with pytest.raises(QuorumError, match="distinct"):
        QuorumSystem((1, 2, 1), 2, 2)


def test_empty_acceptor_set_refused() -> None:
    with pytest.raises(QuorumError, match="at least one acceptor"):
        QuorumSystem.majority([])


def test_quorum_error_is_a_value_error() -> None:
    assert issubclass(QuorumError, ValueError)


def test_votes_count_once_and_only_from_acceptors() -> None:
    """A quorum is a set of distinct acceptors: repeated votes and votes from ids that are
    not acceptors do not count."""
    qs = QuorumSystem.majority((1, 2, 3, 4, 5))
    assert not qs.is_phase1_quorum([1, 1, 1, 2, 2])
    assert not qs.is_phase2_quorum([1, 2, 6, 7, 8])
    assert qs.is_phase1_quorum([1, 2, 3])
    assert qs.is_phase2_quorum([5, 4, 3, 9])


def test_flexible_phase_sizes_are_counted_separately() -> None:
    qs = QuorumSystem.flexible((1, 2, 3, 4), phase1=3, phase2=2)
    assert qs.is_phase2_quorum({1, 2}) and not qs.is_phase1_quorum({1, 2})
    assert qs.is_phase1_quorum({2, 3, 4})


@pytest.mark.parametrize("n", range(1, 7))
def test_every_phase1_quorum_intersects_every_phase2_quorum(n: int) -> None:
    """The fact Paxos safety rests on, checked exhaustively over every subset of up to 6
    acceptors and every valid (q1, q2): any set the system calls a phase-1 quorum shares
    an acceptor with any set it calls a phase-2 quorum."""
    ids = tuple(range(1, n + 1))
    every = subsets(ids)
    for q1, q2 in valid_sizes(n):
        qs = QuorumSystem.flexible(ids, q1, q2)
        phase1 = [s for s in every if qs.is_phase1_quorum(s)]
        phase2 = [s for s in every if qs.is_phase2_quorum(s)]
        assert phase1 and phase2
        for a in phase1:
            for b in phase2:
                assert a & b, f"n={n} q1={q1} q2={q2}: {set(a)} and {set(b)} are disjoint"


@pytest.mark.parametrize("n", range(2, 7))
def test_invalid_sizes_would_admit_disjoint_quorums(n: int) -> None:
    """Why the refusal matters: for every (q1, q2) with q1 + q2 <= n there really are a
    q1-set and a q2-set of acceptors that share no one."""
    ids = tuple(range(n))
    for q1 in range(1, n):
        for q2 in range(1, n + 1 - q1):
            a, b = set(ids[:q1]), set(ids[q1 : q1 + q2])
            assert len(b) == q2 and not a & b


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.integers(0, 2**32), min_size=1, max_size=9),
    st.data(),
)
def test_random_quorums_intersect(ids: set[int], data: st.DataObject) -> None:
    """Property over arbitrary acceptor ids and valid sizes: sets of at least q1 and q2
    acceptors (plus strangers, who do not count) are quorums and always intersect in an
    acceptor; fewer than q1 acceptors never make a phase-1 quorum, whatever strangers
    join them."""
    n = len(ids)
    q1 = data.draw(st.integers(1, n), label="q1")
    q2 = data.draw(st.integers(n + 1 - q1, n), label="q2")
    qs = QuorumSystem.flexible(ids, q1, q2)
    members = st.sampled_from(sorted(ids))
    strangers = st.sets(st.integers(-5, -1), max_size=3)
    a = data.draw(st.sets(members, min_size=q1), label="a") | data.draw(strangers)
    b = data.draw(st.sets(members, min_size=q2), label="b") | data.draw(strangers)
    assert qs.is_phase1_quorum(a) and qs.is_phase2_quorum(b)
    assert a & b & ids
    smaller = data.draw(st.sets(members, max_size=q1 - 1), label="too few") | data.draw(strangers)
    assert not qs.is_phase1_quorum(smaller)

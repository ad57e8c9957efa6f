"""The wire format: every message type survives encode/decode unchanged."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.synod import (
    Accept,
    Accepted,
    Chosen,
    Forward,
    Learned,
    Message,
    Prepare,
    Promise,
    Proposal,
    Rejected,
    decode,
    encode,
)
from pnyx.protocol.synod.messages import MESSAGE_TYPES

U64 = 2**64 - 1  # the largest integer MessagePack carries (node ids may use it)

ids = st.one_of(st.integers(0, 9), st.integers(0, U64))
ballots = st.builds(Ballot, st.one_of(st.integers(0, 9), st.integers(0, MAX_ROUND)), ids)
values = st.binary(max_size=256)
proposals = st.builds(Proposal, ballots, values)

STRATEGIES: dict[type, st.SearchStrategy[Message]] = {
    Prepare: st.builds(Prepare, ids, ballots),
    Promise: st.builds(Promise, ids, ballots, st.one_of(st.none(), proposals)),
    Accept: st.builds(Accept, ids, ballots, values),
    Accepted: st.builds(Accepted, ids, ballots, values),
    Rejected: st.builds(Rejected, ids, ballots, ballots),
    Chosen: st.builds(Chosen, ids, values),
    Learned: st.builds(Learned, ids),
    Forward: st.builds(Forward, ids, values),
}
messages = st.one_of(*STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    """The round-trip property below covers the whole message union, no type left out."""
    assert set(STRATEGIES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_of_each_message_type(kind: type, data: st.DataObject) -> None:
    """decode(encode(m)) gives back an equal message of the same type."""
    m = data.draw(STRATEGIES[kind])
    wire = encode(m)
    assert isinstance(wire, bytes)
    back = decode(wire)
    assert type(back) is kind
    assert back == m


@settings(max_examples=100, deadline=None)
@given(messages)
def test_encoding_is_deterministic_and_canonical(m: Message) -> None:
    """Equal messages encode to equal bytes, and re-encoding a decoded message gives the
    same bytes (the simulator's trace digests depend on it)."""
    wire = encode(m)
    assert encode(type(m)(*msgspec.structs.astuple(m))) == wire
    assert encode(decode(wire)) == wire


@settings(max_examples=100, deadline=None)
@given(messages, messages)
def test_different_messages_encode_differently(a: Message, b: Message) -> None:
    """The type tag is on the wire: messages that differ, in type or in any field, never
    share an encoding (a Accept is never mistaken for an Accepted with equal fields)."""
    if a != b or type(a) is not type(b):
        assert encode(a) != encode(b)


@pytest.mark.parametrize(
    ("accept", "accepted"),
    [(Accept(1, Ballot(2, 3), b"v"), Accepted(1, Ballot(2, 3), b"v"))],
)
def test_same_fields_different_type_do_not_collide(accept: Accept, accepted: Accepted) -> None:
    assert encode(accept) != encode(accepted)
    assert type(decode(encode(accept))) is Accept
    assert type(decode(encode(accepted))) is Accepted


def test_promise_distinguishes_no_proposal_from_an_empty_value() -> None:
    """No accepted proposal and an accepted empty value must not be confused: the
    value rule treats them differently."""
    none = Promise(1, Ballot(2, 1), None)
    empty = Promise(1, Ballot(2, 1), Proposal(Ballot(1, 1), b""))
    assert decode(encode(none)) == none
    assert decode(encode(empty)) == empty
    assert encode(none) != encode(empty)


def test_extreme_field_values_round_trip() -> None:
    """The largest unsigned 64-bit ids and rounds, empty and large values survive."""
    for m in (
        Prepare(U64, Ballot(MAX_ROUND, U64)),
        Accept(0, Ballot(0, 0), b""),
        Chosen(3, bytes(range(256)) * 64),
        Rejected(0, Ballot(1, 0), Ballot(MAX_ROUND, 0)),
    ):
        assert decode(encode(m)) == m

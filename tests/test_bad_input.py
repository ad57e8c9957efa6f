"""Bad input: whatever arrives, `decode` raises `MalformedMessage` and nothing else, and a
`SynodNode` counts what it cannot use in `dropped` and otherwise behaves as if it had
never seen it."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.synod import (
    Accept,
    Accepted,
    AcceptorState,
    Chosen,
    DurableState,
    Forward,
    Learned,
    MalformedMessage,
    Message,
    Prepare,
    Promise,
    Proposal,
    Ready,
    Rejected,
    RetryPolicy,
    SynodConfig,
    SynodNode,
    decode,
    encode,
)
from pnyx.protocol.synod.messages import MESSAGE_TYPES

U64 = 2**64 - 1
MEMBERS = (1, 2, 3)
TAGS = {"prepare", "promise", "accept", "accepted", "rejected", "chosen", "learned", "forward"}
FAST = settings(max_examples=60, deadline=None)

# --------------------------------------------------------------- strategies


def message_strategy(src: st.SearchStrategy[int], rounds: st.SearchStrategy[int]) -> Any:
    ballots = st.builds(Ballot, rounds, st.integers(0, 4))
    values = st.binary(max_size=8)
    proposals = st.one_of(st.none(), st.builds(Proposal, ballots, values))
    return st.one_of(
        st.builds(Prepare, src, ballots),
        st.builds(Promise, src, ballots, proposals),
        st.builds(Accept, src, ballots, values),
        st.builds(Accepted, src, ballots, values),
        st.builds(Rejected, src, ballots, ballots),
        st.builds(Chosen, src, values),
        st.builds(Learned, src),
        st.builds(Forward, src, values),
    )


any_messages = message_strategy(st.integers(0, U64), st.integers(0, U64))
member_messages = message_strategy(st.sampled_from(MEMBERS), st.integers(0, 4))
stranger_messages = message_strategy(
    st.one_of(st.integers(4, 1000), st.just(0), st.just(U64)), st.integers(0, 4)
)

# Any value MessagePack can carry, nested: what a confused or hostile peer could send.
msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), U64),
        st.floats(allow_nan=False),
        st.text(max_size=10),
        st.binary(max_size=10),
        st.sampled_from(sorted(TAGS)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 99)), inner, max_size=4),
    ),
    max_leaves=12,
)


def decodes_or_is_malformed(data: bytes) -> Message | None:
    """Decode; return the message, or None when it raised MalformedMessage. Any other
    exception escapes and fails the test."""
    try:
        m = decode(data)
    except MalformedMessage as exc:
        assert str(exc), "MalformedMessage should say what was wrong"
        return None
    assert isinstance(m, MESSAGE_TYPES)
    return m


def raw(m: Message) -> list[Any]:
    """The message as the plain MessagePack array that travels on the wire."""
    fields = msgspec.msgpack.decode(encode(m))
    assert isinstance(fields, list)
    return fields


def pack(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


# ------------------------------------------------------------------ decode


def test_malformed_message_is_a_value_error() -> None:
    assert issubclass(MalformedMessage, ValueError)


@FAST
@given(st.binary(max_size=64))
def test_decode_random_bytes_raises_only_malformed(data: bytes) -> None:
    """Arbitrary bytes either happen to be a message or raise MalformedMessage."""
    decodes_or_is_malformed(data)


@FAST
@given(msgpack_values)
def test_decode_arbitrary_msgpack_raises_only_malformed(obj: object) -> None:
    """Well-formed MessagePack of the wrong shape (maps, nested lists, floats, strings,
    huge or negative ints) is refused with MalformedMessage, never another error."""
    decodes_or_is_malformed(pack(obj))


@FAST
@given(any_messages, st.data())
def test_decode_truncated_encoding_is_malformed(m: Message, data: st.DataObject) -> None:
    """Every proper prefix of a valid encoding is refused (a short read never yields a
    message with missing fields)."""
    wire = encode(m)
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    with pytest.raises(MalformedMessage):
        decode(wire[:cut])


def test_decode_every_prefix_of_each_type_is_malformed() -> None:
    """The same, exhaustively, for one message of every type."""
    samples = [
        Prepare(1, Ballot(2, 1)),
        Promise(2, Ballot(2, 1), Proposal(Ballot(1, 3), b"value")),
        Accept(1, Ballot(2, 1), b"value"),
        Accepted(2, Ballot(2, 1), b"value"),
        Rejected(3, Ballot(2, 1), Ballot(5, 2)),
        Chosen(1, b"value"),
        Learned(2),
        Forward(3, b"value"),
    ]
    assert {type(m) for m in samples} == set(MESSAGE_TYPES)
    for m in samples:
        wire = encode(m)
        for cut in range(len(wire)):
            with pytest.raises(MalformedMessage):
                decode(wire[:cut])


@FAST
@given(any_messages, st.binary(min_size=1, max_size=8))
def test_decode_trailing_bytes_is_malformed(m: Message, extra: bytes) -> None:
    """One frame is one message: bytes after a complete message are refused."""
    with pytest.raises(MalformedMessage):
        decode(encode(m) + extra)


@FAST
@given(
    any_messages,
    st.one_of(st.text(max_size=12), st.integers(-(2**63), U64), st.none(), st.binary()),
)
def test_decode_unknown_tag_is_malformed(m: Message, tag: object) -> None:
    """A message whose type tag is not one of ours, or not a string, is refused."""
    assume(tag not in TAGS)
    fields = raw(m)
    fields[0] = tag
    with pytest.raises(MalformedMessage):
        decode(pack(fields))


def int_paths(fields: list[Any]) -> list[tuple[int, ...]]:
    """Positions of every integer field (src, ballot rounds and node ids), nested."""
    paths: list[tuple[int, ...]] = []
    for i, x in enumerate(fields):
        if isinstance(x, int) and not isinstance(x, bool):
            paths.append((i,))
        elif isinstance(x, list):
            paths += [(i, *p) for p in int_paths(x)]
    return paths


def replaced(fields: list[Any], path: tuple[int, ...], value: object) -> list[Any]:
    out = list(fields)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = replaced(out[path[0]], path[1:], value)
    return out


@FAST
@given(any_messages, st.integers(-(2**63), -1), st.data())
def test_decode_negative_ints_are_malformed(m: Message, negative: int, data: st.DataObject) -> None:
    """Node ids and ballot rounds are never negative: any negative int is refused."""
    paths = int_paths(raw(m))
    path = data.draw(st.sampled_from(paths), label="path")
    with pytest.raises(MalformedMessage):
        decode(pack(replaced(raw(m), path, negative)))


# For each kind of field, values of a different MessagePack type.
WRONG_FOR: dict[str, list[object]] = {
    "int": ["1", 1.0, True, None, b"\x01", [], {}],
    "bytes": ["text", 1, 1.0, False, None, [], {}],
    "list": ["x", 1, 1.5, True, b"", {}, [], [1]],
    "none": ["x", 1, 1.5, True, b"", {}, [], [1, 2]],
}


def kind_of(x: object) -> str:
    if x is None:
        return "none"
    if isinstance(x, bytes):
        return "bytes"
    if isinstance(x, list):
        return "list"
    assert isinstance(x, int)
    return "int"


@FAST
@given(any_messages, st.data())
def test_decode_wrong_field_types_are_malformed(m: Message, data: st.DataObject) -> None:
    """Any top-level field replaced by a value of another MessagePack type (a string for
    a node id, a float for a ballot, a list for a value, a truncated ballot, ...) is
    refused. A Promise's missing proposal may be None, so None is only wrong elsewhere."""
    fields = raw(m)
    assume(len(fields) > 1)
    i = data.draw(st.integers(1, len(fields) - 1), label="field")
    wrong = list(WRONG_FOR[kind_of(fields[i])])
    if isinstance(m, Promise) and i == 3:
        wrong = [w for w in wrong if w is not None]
    value = data.draw(st.sampled_from(wrong), label="wrong")
    with pytest.raises(MalformedMessage):
        decode(pack(replaced(fields, (i,), value)))


@FAST
@given(any_messages, st.data())
def test_decode_missing_field_is_malformed(m: Message, data: st.DataObject) -> None:
    """A message with one of its fields left out is refused."""
    fields = raw(m)
    i = data.draw(st.integers(1, len(fields) - 1), label="field")
    with pytest.raises(MalformedMessage):
        decode(pack(fields[:i] + fields[i + 1 :]))


@FAST
@given(any_messages, st.data())
def test_decode_corrupted_encoding_raises_only_malformed(m: Message, data: st.DataObject) -> None:
    """A valid encoding with some bytes overwritten (line noise) decodes to some message
    or raises MalformedMessage; nothing else."""
    wire = bytearray(encode(m))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        at = data.draw(st.integers(0, len(wire) - 1), label="at")
        wire[at] = data.draw(st.integers(0, 255), label="byte")
    decodes_or_is_malformed(bytes(wire))


# --------------------------------------------------------------- SynodNode


def config() -> SynodConfig:
    return SynodConfig.majority(MEMBERS, retry=RetryPolicy(timeout=1.0, randomized=False))


def make_node(node_id: int = 1, state: DurableState | None = None) -> SynodNode:
    return SynodNode(node_id, config(), random.Random(7), state)


def nothing_happened(ready: Ready) -> bool:
    return ready.send == [] and ready.persist is None and ready.learned is None


def drive(node: SynodNode, history: list[tuple[Message, bool]]) -> list[Ready]:
    """Replay valid messages into `node`; after those flagged True, persist everything
    so far. Leaves the node with a mix of sent and still-held messages."""
    out = []
    now = 0.0
    for m, persist in history:
        now += 0.01
        ready = node.step(m, now)
        out.append(ready)
        if persist and ready.persist is not None:
            out.append(node.persisted(ready.persist_seq))
    return out


histories = st.lists(st.tuples(member_messages, st.booleans()), max_size=8)


def same_future(a: SynodNode, b: SynodNode) -> None:
    """Two nodes that must be indistinguishable from now on: same durable state, same
    held messages (released by persisting), same answer to the next event."""
    assert a.durable_state() == b.durable_state()
    ra, rb = a.persisted(10**6), b.persisted(10**6)
    assert ra.send == rb.send
    probe = Prepare(2, Ballot(9, 2))
    assert a.step(probe, 5.0).send == b.step(probe, 5.0).send
    assert a.tick(50.0).send == b.tick(50.0).send


@FAST
@given(histories, st.binary(max_size=40))
def test_receive_garbage_is_counted_and_changes_nothing(
    history: list[tuple[Message, bool]], garbage: bytes
) -> None:
    """Whatever state a node is in, undecodable bytes add one to `dropped`, produce no
    message, record or learned value, leave `durable_state()` alone, and do not disturb
    the messages it is holding back: it goes on exactly like a twin that never saw them."""
    assume(decodes_or_is_malformed(garbage) is None)
    node, twin = make_node(), make_node()
    assert drive(node, history) == drive(twin, history)
    before = node.durable_state()
    dropped = node.dropped
    ready = node.receive(garbage, 1.0)
    assert nothing_happened(ready)
    assert node.dropped == dropped + 1
    assert node.durable_state() == before
    same_future(node, twin)


@FAST
@given(histories, stranger_messages, st.booleans())
def test_message_from_non_member_is_dropped(
    history: list[tuple[Message, bool]], m: Message, as_bytes: bool
) -> None:
    """A well-formed message whose sender is not a member, stepped directly or received
    as bytes, is counted in `dropped` and changes nothing."""
    assert m.src not in MEMBERS
    node, twin = make_node(), make_node()
    drive(node, history)
    drive(twin, history)
    before = node.durable_state()
    ready = node.receive(encode(m), 1.0) if as_bytes else node.step(m, 1.0)
    assert nothing_happened(ready)
    assert node.dropped == twin.dropped + 1
    assert node.durable_state() == before
    same_future(node, twin)


NOT_MESSAGES: list[object] = [
    None,
    42,
    "prepare",
    b"\x92\xa7learned\x01",
    ("prepare", 1, (1, 1)),
    ["learned", 1],
    {"t": "learned", "src": 1},
    Ballot(1, 1),
    Proposal(Ballot(1, 1), b"v"),
    AcceptorState(),
    DurableState(chosen=b"v"),
    Ready(),
    object(),
]


@pytest.mark.parametrize("thing", NOT_MESSAGES, ids=lambda t: type(t).__name__)
def test_step_with_a_non_message_object_is_dropped(thing: object) -> None:
    """`step` given something that is not a pnyx message (a tuple, a dict, raw bytes, a
    ballot, a durable record...) counts it as dropped and changes nothing."""
    node, twin = make_node(), make_node()
    history = [(Prepare(2, Ballot(1, 2)), False), (Accept(3, Ballot(2, 3), b"x"), True)]
    drive(node, history)
    drive(twin, history)
    ready = node.step(thing, 1.0)  # type: ignore[arg-type]
    assert nothing_happened(ready)
    assert node.dropped == 1 and twin.dropped == 0
    same_future(node, twin)


@pytest.mark.parametrize("src", [-1, 0, 4, "1", None, 1.0000001])
def test_step_with_a_foreign_src_is_dropped(src: object) -> None:
    """A message object whose `src` is not a member id (negative, unknown, or not even an
    int) is dropped before any role sees it."""
    node = make_node()
    before = node.durable_state()
    ready = node.step(Prepare(src, Ballot(5, 2)), 0.0)  # type: ignore[arg-type]
    assert nothing_happened(ready)
    assert node.dropped == 1
    assert node.durable_state() == before
    assert node.proposer.highest_seen == Ballot(0, 0)


def test_dropped_counts_each_bad_input() -> None:
    node = make_node()
    node.receive(b"", 0.0)
    node.receive(b"\xc1", 0.0)
    node.step(Learned(99), 0.0)
    node.step(None, 0.0)  # type: ignore[arg-type]
    assert node.dropped == 4
    node.step(Learned(2), 0.0)
    assert node.dropped == 4


# ------------------- edges: bytes that are not UTF-8, ballots at the limit, stray persisted


INVALID_UTF8_TAG = b"\x92\xa7\x80earned\x01"  # ["learned", 1] with one byte of line noise


def test_decode_invalid_utf8_tag_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode(INVALID_UTF8_TAG)


def test_receive_invalid_utf8_is_counted_as_dropped() -> None:
    node, twin = make_node(), make_node()
    ready = node.receive(INVALID_UTF8_TAG, 0.0)
    assert nothing_happened(ready)
    assert node.dropped == 1
    same_future(node, twin)


def test_ballot_round_beyond_the_limit_is_malformed() -> None:
    """A round no honest proposer reaches would leave no higher ballot: refuse it."""
    node = make_node(1)
    node.receive(encode(Prepare(2, Ballot(U64, 2))), 0.0)
    assert node.dropped == 1
    assert node.durable_state().promised == Ballot(0, 0)


def test_extreme_ballot_from_the_wire_keeps_outputs_encodable() -> None:
    node = make_node(1)
    r = node.receive(encode(Prepare(2, Ballot(MAX_ROUND - 1, 2))), 0.0)
    assert node.dropped == 0  # it is accepted as well-formed
    node.persisted(r.persist_seq)
    r = node.propose(b"v", 0.0)
    sent = r.send + node.persisted(r.persist_seq).send
    assert sent
    for _, m in sent:
        decode(encode(m))


# The multi-decree `Replica` at the ballot limit: its messages are the multipaxos ones
# (imported inside the test, since this file's names are the Synod ones). The scenarios
# of the rule (a cluster that stays live, replicas far apart that rejoin) are in
# test_ballot_bound.py.


def test_after_the_highest_wire_ballot_a_replica_can_still_run_phase_1() -> None:
    """Issue 11: a member's Prepare with the largest round the wire allows is refused
    (out of reach: `ballot.sight`), never promised and never the highest seen, so the
    replica's next Prepare still decodes at its peers and is promised by them."""
    from harness import Memo
    from pnyx.protocol.ballot import MAX_ROUND_STEP
    from pnyx.protocol.multipaxos import Replica, ReplicaConfig
    from pnyx.protocol.multipaxos.messages import Prepare, Promise, decode, encode

    cfg = ReplicaConfig.majority((1, 2, 3), prevote=False)
    node = Replica(1, cfg, random.Random(0), Memo())  # type: ignore[arg-type]
    peer = Replica(3, cfg, random.Random(3), Memo())  # type: ignore[arg-type]
    wire = encode(Prepare(2, Ballot(MAX_ROUND, 2), 1))
    r = node.receive(wire, 0.0)
    assert node.dropped == 0 and node.acceptor.refused == 1  # well-formed, but refused
    assert (r.send, r.persist) == ([], [])
    assert node.promised == Ballot(0, 0)
    assert node.highest_seen.round < MAX_ROUND_STEP
    r = node.tick(10.0)  # election timeout: phase 1 with the next ballot
    sent = r.send + node.persisted(r.persist_seq).send
    prepares = [m for _, m in sent if isinstance(m, Prepare)]
    assert prepares
    for m in prepares:
        try:
            m = decode(encode(m))
        except MalformedMessage as exc:
            pytest.fail(f"peers refuse our only possible Prepare {m}: {exc}")
        assert m.ballot.round <= MAX_ROUND_STEP
    reply = peer.step(prepares[0], 10.0)  # one Prepare, sent to each member
    replies = reply.send + peer.persisted(reply.persist_seq).send
    assert any(isinstance(p, Promise) and p.ballot == prepares[0].ballot for _, p in replies)


def test_persisted_for_a_record_never_issued_does_not_release_later_messages() -> None:
    node = make_node(2)
    node.persisted(99)
    ready = node.step(Prepare(1, Ballot(1, 1)), 0.0)
    assert ready.persist is not None
    assert ready.send == [], "the Promise left before its record was durable"

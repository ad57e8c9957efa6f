"""The messages of Basic Paxos, and their wire encoding.

Names follow the seed: a proposer sends `Prepare` (phase 1a) and `Accept`
(phase 2a); an acceptor answers `Promise` (1b) or `Accepted` (2b), or
`Rejected` carrying the highest ballot it has promised so the proposer can
jump past it. A learner that knows the chosen value tells others with
`Chosen`, and they confirm with `Learned`. `Forward` carries a client's value
from any member to the distinguished proposer (the seed: writes go to any
member).

Every message names its sender in `src`. On the wire a message is a msgspec
struct encoded as MessagePack with a type tag; `decode` turns anything
malformed, truncated or unknown into `MalformedMessage` and nothing else.
"""

from __future__ import annotations

import msgspec

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.codec import MalformedMessage as MalformedMessage  # re-exported
from pnyx.protocol.codec import NodeId, decode_with

Value = bytes


class Proposal(msgspec.Struct, frozen=True, array_like=True):
    """A value together with the ballot it was proposed (and accepted) in."""

    ballot: Ballot
    value: Value


class _Message(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    src: NodeId


class Prepare(_Message, tag="prepare"):
    """Phase 1a: "promise me you will not accept anything below `ballot`"."""

    ballot: Ballot


class Promise(_Message, tag="promise"):
    """Phase 1b: the promise, and the highest-numbered proposal accepted so far."""

    ballot: Ballot
    accepted: Proposal | None


class Accept(_Message, tag="accept"):
    """Phase 2a: "accept `value` in `ballot`"."""

    ballot: Ballot
    value: Value


class Accepted(_Message, tag="accepted"):
    """Phase 2b: the acceptor accepted `value` in `ballot`."""

    ballot: Ballot
    value: Value


class Rejected(_Message, tag="rejected"):
    """A refused Prepare or Accept for `ballot`; `promised` is the higher ballot in the way."""

    ballot: Ballot
    promised: Ballot


class Chosen(_Message, tag="chosen"):
    """A learner that knows `value` was chosen tells another learner."""

    value: Value


class Learned(_Message, tag="learned"):
    """The reply to `Chosen`: the sender now knows the chosen value."""


class Forward(_Message, tag="forward"):
    """A client's value handed from the member it reached to the distinguished proposer."""

    value: Value


Message = Prepare | Promise | Accept | Accepted | Rejected | Chosen | Learned | Forward
MESSAGE_TYPES: tuple[type, ...] = (
    Prepare, Promise, Accept, Accepted, Rejected, Chosen, Learned, Forward,
)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    """Decode one message; anything else raises `MalformedMessage` with the reason."""
    return decode_with(_decoder, data)

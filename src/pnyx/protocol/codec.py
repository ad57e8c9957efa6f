"""Decoding untrusted bytes into protocol messages, with one kind of failure.

Both message families (`synod.messages`, `multipaxos.messages`) are msgspec
structs encoded as MessagePack with a type tag. Whatever a peer sends —
truncated, malformed, of an unknown type, with a field out of range — decodes
to `MalformedMessage` and nothing else, so a driver can count it and go on.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec

NodeId = Annotated[int, msgspec.Meta(ge=0)]

T = TypeVar("T")


class MalformedMessage(ValueError):
    """Bytes that are not a well-formed pnyx message."""


def decode_with(decoder: msgspec.msgpack.Decoder[T], data: bytes) -> T:
    """Decode with `decoder`; anything malformed raises `MalformedMessage` with the reason."""
    try:
        return decoder.decode(data)
    except (msgspec.MsgspecError, ValueError, TypeError) as exc:
        # msgspec raises UnicodeDecodeError (a ValueError) for a str that is not UTF-8.
        raise MalformedMessage(str(exc)) from None

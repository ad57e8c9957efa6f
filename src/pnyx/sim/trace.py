"""The event trace of a simulated run: JSON lines, and a digest of them.

Every event the simulator handles becomes one JSON object per line (time in
seconds, an event name, and its details). The SHA-256 of the lines is the
run's fingerprint: the same seed must give the same digest, byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import IO, Any

import msgspec

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.synod.messages import Message, Proposal


def _plain(value: Any) -> Any:
    if isinstance(value, Ballot):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Proposal):
        return {"ballot": str(value.ballot), "value": _plain(value.value)}
    return value


def describe(message: Message) -> dict[str, Any]:
    """A message as a flat, readable dict: {"type": "promise", "src": 1, ...}."""
    out: dict[str, Any] = {"type": type(message).__name__.lower()}
    for name in message.__struct_fields__:
        out[name] = _plain(getattr(message, name))
    return out


class Trace:
    def __init__(self, sink: IO[bytes] | None = None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._encoder = msgspec.json.Encoder()
        self.events = 0

    def emit(self, time: float, event: str, **details: Any) -> None:
        record = {"t": round(time, 9), "ev": event, **details}
        line = self._encoder.encode(record) + b"\n"
        self._hash.update(line)
        self.events += 1
        if self._sink is not None:
            self._sink.write(line)

    def digest(self) -> str:
        return self._hash.hexdigest()

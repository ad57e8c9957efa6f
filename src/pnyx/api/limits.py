"""Bounds on client connections, shared by the HTTP and the binary ports.

A node serves whoever can reach its client ports; nothing one of them does may
hold the node's resources without bound or stop it serving the rest. So every
client connection is bounded in time and number (`ClientLimits`, set by
`pnyx serve --body-timeout --idle-timeout --max-connections --max-inflight`):

- `body_timeout`: an HTTP request body, once its headers have arrived, must
  arrive whole within this (else 408 and the connection is closed); a binary
  frame, once its first byte has arrived, likewise (else the connection is
  closed). A TLS handshake must also finish within it.
- `idle_timeout`: a connection with no request in progress is closed after
  this long without a request. On HTTP this also bounds the wait for a
  request's line and headers (aiohttp's keep-alive timer runs from the
  connection's start or its last answer).
- `max_connections`: connections per port; one over it is answered at once
  (HTTP: 503 `too_many_connections` in the JSON error shape; binary: a
  `ClientResponse` with id 0, `ok=False`, code `unavailable`) and closed,
  while the node serves the rest. Counted once a connection is established
  (after its TLS handshake, which `body_timeout` bounds).
- `max_inflight`: requests of one connection at the node at once. Past it
  the node stops reading that connection (TCP backpressure) until some
  finish; nothing is refused, so a client that pipelines more only waits.
- `max_pending`: admission control, requests at the node at once over every
  client connection and port of the node (`Admission`, one per node). A
  request past it is refused at once instead of queueing: HTTP answers 503
  `overloaded` with `Retry-After`; the binary protocol `ok=False`, code
  `unavailable` (which every client already retries after a pause), `unknown`
  false, and words starting `overloaded`. Without a bound a node offered more
  than it can commit queues without end: latency grows until every request
  times out and memory with it. The default (1024, `pnyx serve --max-pending`)
  takes the closed-loop benchmark's largest load (1,024 clients, a request
  each) and, at the rate a 3-node cluster commits on a 2-core machine, is
  about 60 ms of queue: measured, 4096 gave the same throughput under 2x
  overload at four times the latency (bench/results/2026-12-03-perf).

`Refusal` is the protocol that answers a connection over the cap.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any, Final, cast

# How long a refused connection may stay open for the client to read its answer.
REFUSAL_GRACE: Final = 1.0

DEFAULT_MAX_PENDING: Final = 1024

# What a refusal by admission control says, on every port (the binary protocol's words
# start with it).
OVERLOADED: Final = "overloaded"


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """See the module docstring; the defaults are `pnyx serve`'s (`NodeConfig`'s)."""

    body_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    max_inflight: int = 4096
    max_pending: int = DEFAULT_MAX_PENDING

    def __post_init__(self) -> None:
        for name in ("body_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name in ("max_connections", "max_inflight", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")

    @property
    def sweep_every(self) -> float:
        """How often a server checks its connections against the timeouts: a timeout is
        enforced within a quarter of itself late (at most a second)."""
        return min(max(min(self.body_timeout, self.idle_timeout) / 4, 0.01), 1.0)


class Refusal(asyncio.Protocol):
    """A connection over the cap: `answer` is written at once, then the connection closes.

    The close waits until the client has had a moment to read the answer: closing a
    socket with unread input resets it, which could destroy the answer in flight.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.WriteTransport subclasses, but behave as one.
        transport = cast(asyncio.WriteTransport, transport)
        transport.write(self.answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_GRACE, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer says to go elsewhere

    def eof_received(self) -> bool:
        return False  # the client read the answer and closed: close too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None



class Admission:
    """A node's requests at the node at once, over all its client ports; see `max_pending`."""

    __slots__ = ("__weakref__", "current", "limit", "refused")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_pending must be at least 1, not {limit!r}")
        self.limit = limit
        self.current = 0
        self.refused = 0  # since the node started

    def try_enter(self) -> bool:
        """Take a place for one request; False (and counted) if the node has none free."""
        if self.current >= self.limit:
            self.refused += 1
            return False
        self.current += 1
        return True

    def leave(self) -> None:
        self.current -= 1


# One per node, shared by its HTTP and binary servers: the node is what overloads.
_admissions: weakref.WeakKeyDictionary[Any, Admission] = weakref.WeakKeyDictionary()


def admission_for(node: Any, limit: int) -> Admission:
    """The node's `Admission` (made on first use with `limit`; the first server's limit
    holds for every port of the node)."""
    try:
        return _admissions[node]
    except KeyError:
        admission = _admissions[node] = Admission(limit)
        return admission
    except TypeError:  # a node that cannot be weakly referenced: its own, per server
        return Admission(limit)

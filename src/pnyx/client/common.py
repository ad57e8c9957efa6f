"""What every pnyx client shares, whatever it speaks: endpoints, arguments, retries, errors.

- `parse_endpoints`: the nodes' addresses, checked once; `tls_context`: whether
  and how a client speaks TLS (`https://` endpoints, or `cacert`/`cert`/`key`).
- argument checks (`as_bytes`, `check_key`, `check_consistency`, `check_keys_args`)
  and idempotency keys (`IdempotencyKeys`: a fresh key per write, or the
  caller's, checked).
- `Attempts`: one call's tries over the nodes: which node is next, the backoff
  between whole rounds, the deadline, and whether some attempt may have taken
  effect (`unknown`), ending in the `Unavailable` a client raises.
- `error_for(status, code, message, ...)`: the one place an answer becomes a
  `pnyx.errors` exception, by its HTTP status (the fast client translates its
  wire codes to the HTTP status and code first, so both raise the same).
"""

from __future__ import annotations

import itertools
import math
import secrets
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from pnyx.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PnyxError,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)
from pnyx.statemachine import kv

DEFAULT_TIMEOUT: Final = 10.0  # per attempt; above the server's request timeout (5 s)
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
DEFAULT_RETRY_TIMEOUT: Final = 30.0  # per call, over every attempt
MAX_PAGE: Final = 1000  # the server's largest page of keys
CONSISTENCY: Final = ("linearizable", "quorum", "stale")
# The namespace the HTTP API puts clients' idempotency keys in (`pnyx.api.http`), so a
# key from `Unavailable.idempotency_key` may be retried through either client.
CLIENT_KEY_PREFIX: Final = "h:"
MAX_IDEMPOTENCY_KEY: Final = kv.MAX_ID_BYTES - len(CLIENT_KEY_PREFIX)

FIRST_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 1.0
# A member that failed an attempt is tried after the others for this long (seconds):
# a member cut off from the leader answers 503 at once, and is not asked again at once.
FAILED_MEMORY: Final = 2.0


def parse_endpoints(endpoints: Sequence[str] | str) -> list[tuple[str, int]]:
    """`["host:port", ...]` (or one comma-separated string) as `(host, port)` pairs.

    An `http://` or `https://` prefix is allowed (`endpoint_schemes` says which were
    given); IPv6 hosts go in brackets (`[::1]:8001`). Raises `ValueError` with the
    offending entry.
    """
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    out: list[tuple[str, int]] = []
    for entry in endpoints:
        if not isinstance(entry, str):
            raise ValueError(f"endpoint {entry!r} is not a string like 127.0.0.1:8001")
        text = entry.strip()
        for scheme in _SCHEMES:
            text = text.removeprefix(scheme)
        text = text.rstrip("/")
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"endpoint {entry!r} is not host:port (like 127.0.0.1:8001)")
        if any(c in host for c in "/?#@ ") or (":" in host and "[" not in text):
            raise ValueError(f"endpoint {entry!r} is not host:port (like 127.0.0.1:8001)")
        out.append((host, int(port_text)))
    if not out:
        raise ValueError("no endpoints given")
    return out


_SCHEMES: Final = ("http://", "https://")


def endpoint_schemes(endpoints: Sequence[str] | str) -> set[str]:
    """The schemes the endpoints name ("http", "https"; none for bare `host:port`)."""
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    return {e.strip().split("://", 1)[0] for e in endpoints
            if isinstance(e, str) and e.strip().startswith(_SCHEMES)}


PathLike = str | Path


def tls_context(endpoints: Sequence[str] | str, *, ssl_context: ssl.SSLContext | None,
                cacert: PathLike | None, cert: PathLike | None, key: PathLike | None,
                ) -> ssl.SSLContext | None:
    """How a client reaches the nodes: a TLS context, or None for plaintext.

    TLS when the endpoints say `https://`, or any of `ssl_context` (used as given),
    `cacert` (the CA the nodes' certificates must chain to; default: the system's),
    `cert` and `key` (a client certificate, for ports with `--client-cert-auth`) is
    given. Asking for TLS with `http://` endpoints, or mixing the two, is a
    `ValueError`, as is a key without its certificate; unreadable files are
    `pnyx.tls.TlsError` (a `ValueError` too).
    """
    from pnyx.tls import client_context

    schemes = endpoint_schemes(endpoints)
    options = ssl_context is not None or cacert is not None or cert is not None or (
        key is not None)
    if schemes == {"http", "https"}:
        raise ValueError("endpoints mix http:// and https://: a cluster's nodes speak one")
    if "http" in schemes and options:
        raise ValueError("TLS options given with http:// endpoints: use https:// (or bare "
                         "host:port)")
    if key is not None and cert is None:
        raise ValueError("a client key needs its certificate (cert=)")
    if ssl_context is not None:
        if cacert is not None or cert is not None:
            raise ValueError("give either ssl_context or cacert/cert/key, not both")
        return ssl_context
    if not options and "https" not in schemes:
        return None
    try:
        return client_context(Path(cacert) if cacert is not None else None,
                              Path(cert) if cert is not None else None,
                              Path(key) if key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(f) for f in (cacert, cert, key) if f is not None)
        raise ValueError(f"cannot use TLS files {files}: {exc.strerror or exc}") from None


def untrusted(where: str, exc: BaseException) -> PnyxError:
    """A node whose certificate does not check out: raised at once, not retried (every
    node of a cluster has a certificate from the same CA, so the next would fail too)."""
    reason = getattr(exc, "verify_message", None) or describe(exc)
    return PnyxError(f"{where}: TLS: the node's certificate is not trusted ({reason}); "
                     "give the cluster's CA (cacert=, --cacert)", code="tls_untrusted")


def endpoint_name(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClientBase:
    """The settings and the node choice every client has.

    `endpoints`: node addresses, `["127.0.0.1:8001", ...]`. `timeout`: seconds one
    attempt may take; `connect_timeout`: seconds to connect; `retry_timeout`:
    seconds one call may spend over all its attempts and nodes. A client sticks
    to one node (`_current`) and moves on when an attempt there fails: to the
    member that answered it most recently among those that have not failed in
    the last `FAILED_MEMORY` seconds (else the next in turn), so a member cut off
    from the leader, or down, costs one quick attempt, not one per call.
    TLS (`ssl_context`, `cacert`, `cert`, `key`, or `https://` endpoints): see
    `tls_context`; `self.ssl` is the context, or None for plaintext.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float,
                 connect_timeout: float, retry_timeout: float,
                 ssl_context: ssl.SSLContext | None = None, cacert: PathLike | None = None,
                 cert: PathLike | None = None, key: PathLike | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.ssl = tls_context(endpoints, ssl_context=ssl_context, cacert=cacert, cert=cert,
                               key=key)
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout),
                            ("retry_timeout", retry_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        # Start at a random node, so many clients spread over the cluster.
        self._current = secrets.randbelow(len(self.endpoints))
        # When each member last answered (anything but unavailable), and last failed.
        self._answered_at = [-math.inf] * len(self.endpoints)
        self._failed_at = [-math.inf] * len(self.endpoints)
        self._idempotency_keys = IdempotencyKeys()

    def _attempts(self, now: float, *, write: bool, key: str | None = None) -> Attempts:
        return Attempts(now, self.retry_timeout, write=write, key=key)

    def _turns(self, attempts: Attempts, clock: Callable[[], float]) -> Iterator[int | None]:
        """The nodes one call tries, in turn: a node's index for each attempt, and None
        after each whole round that failed (the caller then waits `attempts.pause`).

        A caller that is done returns from its loop; one that goes on is moved on
        from the node it tried (`_move_on`). Raises `attempts.give_up()` once the
        call's time is up, checked after each failed attempt and after each pause.
        """
        while True:
            tried: set[int] = set()
            while len(tried) < len(self.endpoints):
                i = self._current if self._current not in tried else self._pick(tried)
                tried.add(i)
                yield i
                self._move_on(i, tried)
                if attempts.expired(clock()):
                    raise attempts.give_up()
            yield None
            if attempts.expired(clock()):
                raise attempts.give_up()

    def _move_on(self, i: int, tried: set[int] | None = None) -> None:
        """Node `i` failed: the next call starts at another (once, however many calls
        failed there together), the best by `_pick`."""
        self._failed_at[i] = time.monotonic()
        if self._current == i:
            self._current = self._pick({i} | (tried or set()))

    def _answered_by(self, i: int) -> None:
        """Node `i` answered (a result, or a refusal of the request itself)."""
        self._answered_at[i] = time.monotonic()

    def _pick(self, exclude: set[int]) -> int:
        """The member to try next, not in `exclude` (if any is left): one that has not
        failed lately before one that has; then the one that answered last; then the
        next in turn after the current one."""
        n = len(self.endpoints)
        order = [(self._current + k) % n for k in range(1, n + 1)]
        candidates = [j for j in order if j not in exclude] or order
        now = time.monotonic()

        def rank(j: int) -> tuple[bool, float, int]:
            failed = (now - self._failed_at[j] < FAILED_MEMORY
                      and self._failed_at[j] >= self._answered_at[j])
            return failed, -self._answered_at[j], order.index(j)

        return min(candidates, key=rank)

    def _name(self, i: int) -> str:
        return endpoint_name(self.endpoints[i])

    def _endpoint_names(self) -> set[str]:
        return {endpoint_name(e) for e in self.endpoints}


# --- arguments ---------------------------------------------------------------------


def as_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    return key


def check_consistency(consistency: str) -> None:
    if consistency not in CONSISTENCY:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY)}, "
                         f"not {consistency!r}")


def check_keys_args(limit: int | None, consistency: str) -> None:
    check_consistency(consistency)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, not {limit!r}")


def page_size(limit: int | None, have: int) -> int:
    """How many keys to ask for next, having `have` of `limit` (None: all)."""
    return MAX_PAGE if limit is None else min(MAX_PAGE, limit - have)


class IdempotencyKeys:
    """The key each write is sent under, on every attempt and to whichever node.

    Generated keys are a random prefix and a counter: as unique per call as a
    uuid4, at a fraction of the cost. A caller's own key is checked the way the
    HTTP API checks the `Idempotency-Key` header.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(12) + "."
        self._counter = itertools.count(1)

    def key(self, given: str | None) -> str:
        if given is None:
            return f"{self._prefix}{next(self._counter)}"
        if (not isinstance(given, str) or not given or len(given) > MAX_IDEMPOTENCY_KEY
                or not all(" " <= c <= "~" for c in given)):
            raise BadRequest(
                f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                "characters", status=400, code="invalid")
        return given


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Failed(Exception):
    """One attempt got no answer; `sent` if the request may have reached the node."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


# --- retries -----------------------------------------------------------------------


class Attempts:
    """One call's attempts: each node in turn from the client's current one, rounds
    apart by a growing backoff, until `retry_timeout` has passed.

    The caller's loop: `for i in attempts.round(): try node i; on success return;
    else attempts.failed(...)`, then `attempts.pause()` (seconds to sleep, or
    raise `give_up()` when time is up). The clock is the caller's (`now`).
    """

    __slots__ = ("backoff", "deadline", "key", "last", "last_status", "maybe_applied",
                 "retry_timeout", "write")

    def __init__(self, now: float, retry_timeout: float, *, write: bool,
                 key: str | None = None) -> None:
        self.deadline = now + retry_timeout
        self.retry_timeout = retry_timeout
        self.write = write
        self.key = key
        self.backoff = FIRST_BACKOFF
        self.last = "no attempt made"
        self.last_status: int | None = None  # a node's status if the last failure was one
        self.maybe_applied = False  # some attempt may have reached a node and taken effect

    def failed(self, where: str, reason: str, *, sent: bool, status: int | None = None,
               ) -> None:
        """An attempt failed: unanswered (`status` None) or answered as unavailable."""
        self.maybe_applied = self.maybe_applied or sent
        self.last = f"{where}: {reason}" if where else reason
        self.last_status = status

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def pause(self, now: float) -> float:
        """After a round in which every node failed: how long to wait before the next."""
        delay = max(0.0, min(self.backoff, self.deadline - now))
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        return delay

    def give_up(self, reason: str | None = None) -> Unavailable:
        return Unavailable(
            reason or f"no node could answer within {self.retry_timeout:g} s; last: {self.last}",
            unknown=self.write and self.maybe_applied, idempotency_key=self.key,
            status=self.last_status)


# --- errors ------------------------------------------------------------------------


def error_for(status: int | None, code: str | None, message: str, *,
              extra: dict[str, Any] | None = None) -> PnyxError:
    """The exception for an error answer: its class by HTTP status, as the API documents."""
    extra = extra or {}
    if status == 400:
        return BadRequest(message, status=status, code=code)
    if status == 404:
        return NotFound(message, status=status, code=code)
    if status == 412:
        index = extra.get("index")
        return PreconditionFailed(message, index=index if isinstance(index, int) else -1,
                                  status=status, code=code)
    if status == 409 and code in ("conflict", "refused"):
        return Conflict(message, status=status, code=code)
    if status == 413:
        return ValueTooLarge(message, status=status, code=code)
    if status == 503:
        return Unavailable(message, unknown=bool(extra.get("unknown", False)),
                           status=status, code=code)
    return PnyxError(message, status=status, code=code)

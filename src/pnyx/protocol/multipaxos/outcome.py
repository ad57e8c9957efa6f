"""What became of a client's command or read: a typed outcome.

Every failure carries a `Code`; drivers and APIs decide what failed by the
code, never by the words of the message (HTTP and the binary protocol each
map codes to their answers in one table). `unknown` is the one distinction
a client must act on: a command whose outcome is unknown may still take
effect (retry it under the same request identity, which de-duplication makes
safe); any other failure never reached the log.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

ReadMode = Literal["linearizable", "quorum", "stale"]
READ_MODES: tuple[ReadMode, ...] = ("linearizable", "quorum", "stale")


class Code(enum.StrEnum):
    """Why a command or read failed."""

    NONE = ""  # it did not fail
    TOO_LARGE = "too_large"  # the command exceeds max_command: refused, never retried
    BAD_REQUEST = "bad_request"  # e.g. an unknown read mode: refused, never retried
    ABORTED = "aborted"  # its leader lost the ballot before it was chosen (unknown)
    NOT_LEADER = "not_leader"  # a read-index was asked of a replica that does not lead
    NO_LEADER = "no_leader"  # no quorum or no leader within the request's time
    TIMEOUT = "timeout"  # a read found no quorum in time
    READ_DISAGREED = "read_disagreed"  # a quorum read's replies never agreed
    SHUTTING_DOWN = "shutting_down"  # the node is stopping
    INTERNAL = "internal"  # a bug or a failing state machine; see the node's log
    # This member reaches no leader (nor, leading, a quorum), and has not for a while:
    # answered at once, so the client asks another member rather than wait here (an
    # API does not retry it at the same member).
    CUT_OFF = "cut_off"
    # A membership change made against a configuration that is no longer the latest
    # (another change won): read the configuration again and retry.
    CONFLICT = "conflict"
    # A membership change the leader would not propose now: it would leave no live
    # quorum, or promote a learner that has not caught up. It may succeed later.
    REFUSED = "refused"

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed (a refusal for the request itself won't)."""
        return self not in (Code.TOO_LARGE, Code.BAD_REQUEST, Code.CONFLICT, Code.REFUSED)


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """`ok` with `result` and the log `index` it took effect at (or was read at);
    otherwise `code` says why and `error` says it in words."""

    ok: bool
    result: bytes = b""
    index: int = 0
    error: str = ""
    unknown: bool = False
    code: Code = Code.NONE

    @classmethod
    def failed(cls, code: Code, message: str, *, unknown: bool = False) -> Outcome:
        return cls(False, error=message, unknown=unknown, code=code)

"""The exceptions every pnyx client raises, one per kind of answer.

Each carries the HTTP `status` and the API's error `code` when a node answered
(see `pnyx.api.http` for the codes; the fast clients report the status and
code HTTP would have given), or neither when none could be reached.
`pnyx.client.common.error_for` picks the class from the status.
"""

from __future__ import annotations


class PnyxError(Exception):
    """Base of every pnyx client error."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class BadRequest(PnyxError):
    """The request was malformed (bad key, bad parameter, contradictory conditions): 400."""


class NotFound(PnyxError):
    """The key does not exist (or a condition needed it to): 404."""


class PreconditionFailed(PnyxError):
    """A `prev_value`/`prev_index`/`prev_exist` condition did not hold: 412.

    `index` is the key's current `mod_index`, to re-read or retry against.
    """

    def __init__(self, message: str, *, index: int, status: int | None = 412,
                 code: str | None = "precondition_failed") -> None:
        super().__init__(message, status=status, code=code)
        self.index = index


class Conflict(PnyxError):
    """A membership change refused for now, 409: another change got in first (`code`
    "conflict": read the members again and retry against the new version), or the
    leader would not propose it now ("refused": it would leave no live quorum, or
    promote a learner that has not caught up; it may succeed later)."""


class ValueTooLarge(PnyxError):
    """The value is larger than the node accepts: 413."""


class Unavailable(PnyxError):
    """No node could do it in time: none reachable, or no quorum or leader (503).

    `unknown` is True for a write that may still have taken effect (it reached
    a node before the failure). `idempotency_key` is the key the write was sent
    under: pass it as `idempotency_key=` to retry the write safely (a new call
    without it would be a second write).
    """

    def __init__(self, message: str, *, unknown: bool = False,
                 idempotency_key: str | None = None, status: int | None = None,
                 code: str | None = "unavailable") -> None:
        super().__init__(message, status=status, code=code)
        self.unknown = unknown
        self.idempotency_key = idempotency_key

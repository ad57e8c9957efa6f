"""How the HTTP API says no: the error body, the exception that carries it, the outcome table.

This module owns `ApiError` (raised anywhere below a handler, rendered by the
middleware), `error_json` (every error body is
`{"error": {"code": ..., "message": ...}}`, whichever server writes it),
`error_response` (that body as aiohttp's answer), and `HTTP_FAILURES`, the one
table from a failed outcome's `Code` to its status, code and `Retry-After`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from aiohttp import web

from pnyx.protocol.multipaxos import Code

RETRY_AFTER_SECONDS: Final = 1


class HttpFailure(NamedTuple):
    """How an API answers a failed outcome: status, error code, and whether to say when to
    retry (`Retry-After`)."""

    status: int
    code: str
    retry_after: bool


_UNAVAILABLE: Final = HttpFailure(503, "unavailable", True)

# The one table from an outcome's `Code` to its HTTP answer. Every code is here (a test
# checks); `NONE` on a failure is a node that did not say why: unavailable, retry.
HTTP_FAILURES: Final[dict[Code, HttpFailure]] = {
    Code.NONE: _UNAVAILABLE,
    Code.TOO_LARGE: HttpFailure(413, "value_too_large", False),
    Code.BAD_REQUEST: HttpFailure(400, "invalid", False),
    Code.ABORTED: _UNAVAILABLE,
    Code.NOT_LEADER: _UNAVAILABLE,
    Code.NO_LEADER: _UNAVAILABLE,
    Code.TIMEOUT: _UNAVAILABLE,
    Code.READ_DISAGREED: _UNAVAILABLE,
    Code.SHUTTING_DOWN: _UNAVAILABLE,
    Code.INTERNAL: HttpFailure(500, "internal", False),
    Code.CUT_OFF: _UNAVAILABLE,  # at once, with the leader's address when known
    # Membership changes (`pnyx.api.members`): another change got in first (read the
    # members again, retry against the new version), or the leader would not propose
    # it now (no live quorum after it; a learner not caught up).
    Code.CONFLICT: HttpFailure(409, "conflict", False),
    Code.REFUSED: HttpFailure(409, "refused", False),
}


class ApiError(Exception):
    """An HTTP error response, raised anywhere below a handler and rendered by the middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.close = close  # close the connection after answering

    def response(self) -> web.Response:
        response = error_response(self.status, self.code, self.message,
                                  headers=self.headers, extra=self.extra)
        if self.close:
            response.force_close()
        return response


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    return web.json_response(error_json(code, message, extra), status=status,
                             headers=dict(headers or {}))


def error_json(code: str, message: str, extra: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """The API's one error shape; `extra` adds fields beside the code and message."""
    return {"error": {"code": code, "message": message, **(extra or {})}}

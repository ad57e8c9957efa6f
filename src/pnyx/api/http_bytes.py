"""An HTTP/1.1 answer written straight to bytes, for the servers that write their own.

This module owns `response_bytes` (status line, `Content-Type`, the given
headers, `Connection: close` if asked, `Content-Length`, the body),
`error_bytes` (an error in the API's one shape, `http_errors.error_json`), and
`refusal_bytes`, the 503 `too_many_connections` a port past `max_connections`
writes before closing (`pnyx.api.limits.Refusal`; both HTTP servers send it).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Final

from pnyx.api.http_errors import RETRY_AFTER_SECONDS, error_json
from pnyx.api.limits import ClientLimits

JSON: Final = b"application/json; charset=utf-8"


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_REASONS: Final = {s.value: _reason(s.value) for s in HTTPStatus}


def response_bytes(status: int, body: bytes, content_type: bytes = JSON, *,
                   headers: dict[str, str] | None = None, close: bool = False,
                   head_only: bool = False) -> bytes:
    """One whole HTTP/1.1 answer."""
    out = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (
        status, _REASONS.get(status) or _reason(status), content_type)]
    if headers:
        for name, value in headers.items():
            out.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    if close:
        out.append(b"Connection: close\r\n")
    out.append(b"Content-Length: %d\r\n\r\n" % len(body))
    if not head_only:
        out.append(body)
    return b"".join(out)


def error_bytes(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                extra: dict[str, Any] | None = None, close: bool = False,
                head_only: bool = False) -> bytes:
    """An error in the API's shape: `{"error": {"code": ..., "message": ...}}` (as
    `http_errors.error_response` writes it: the same `json.dumps`)."""
    body = json.dumps(error_json(code, message, extra)).encode()
    return response_bytes(status, body, headers=headers, close=close, head_only=head_only)


def refusal_bytes(limits: ClientLimits) -> bytes:
    """The answer to a connection past `limits.max_connections`, then closed."""
    body = json.dumps(error_json(
        "too_many_connections", f"too many connections to this node (at most "
        f"{limits.max_connections}); try another node or later")).encode()
    return response_bytes(503, body, b"application/json",
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, close=True)

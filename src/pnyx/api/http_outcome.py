"""From a node's outcome to the HTTP API's answer: one rule for both HTTP servers.

This module owns the refusal of a request past the node's admission bound
(`overloaded_error`), when a request at the node is tried again (`answer_now`, and
the back-off `RETRY_FIRST_DELAY` doubling up to `RETRY_MAX_DELAY`), the error
a failed outcome is answered with (`failure_error`, from `HTTP_FAILURES`,
saying whether a write may still take effect), and the error the key-value
machine's refusal is answered with (`result_error`). The aiohttp handlers of
`pnyx.api.http` raise these errors; the httptools server (`pnyx.api.http_h1_call`)
writes them as bytes.
"""

from __future__ import annotations

from typing import Any, Final

from pnyx.api.http_errors import HTTP_FAILURES, RETRY_AFTER_SECONDS, ApiError
from pnyx.api.http_parse import IDEMPOTENCY_HEADER
from pnyx.api.limits import Admission
from pnyx.api.node_api import NodeAPI, leader_hint
from pnyx.protocol.multipaxos import Code, Outcome
from pnyx.statemachine import kv

RETRY_FIRST_DELAY: Final = 0.01
RETRY_MAX_DELAY: Final = 0.2


def overloaded_error(admission: Admission, write: bool) -> ApiError:
    """503 `overloaded`: the node has `admission.limit` requests in flight already. Refused
    before the node saw it, so a write is certainly not applied."""
    return ApiError(503, "overloaded", "this node has as many requests in flight as "
                    f"it takes ({admission.limit}); retry after a pause",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                    extra={"unknown": False} if write else None)


def answer_now(outcome: Outcome, write: bool) -> bool:
    """Whether a failed `outcome` is answered without another attempt, whatever time is
    left: refused for the request itself, a member cut off (the client should go elsewhere
    now), or a write that never reached the log (a retry would be a second attempt, not a
    resubmission)."""
    return (not outcome.code.retryable or outcome.code is Code.CUT_OFF
            or (write and not outcome.unknown))


def failure_error(outcome: Outcome, write: bool, unknown: bool, node: NodeAPI) -> ApiError:
    """A failed outcome as `HTTP_FAILURES` answers it; `unknown`: an earlier attempt of this
    write may still take effect. A cut-off member names the leader when it knows it."""
    failure = HTTP_FAILURES[outcome.code]
    message = outcome.error or "no quorum or no leader in time"
    extra: dict[str, Any] = leader_hint(node) if outcome.code is Code.CUT_OFF else {}
    unknown = unknown or outcome.unknown
    if failure.retry_after and write:
        extra["unknown"] = unknown
        if unknown:
            message += (" (the write may still take effect; retry with the same "
                        "Idempotency-Key)")
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if failure.retry_after else {}
    return ApiError(failure.status, failure.code, message, headers=headers, extra=extra)


def result_error(result: kv.Result, key: str, given: str) -> ApiError:
    """The machine's refusal of a request on `key`, whose `Idempotency-Key` header was
    `given` (the machine's message names the key as stored, with this layer's namespace
    prefix; the client knows it by its header)."""
    if isinstance(result, kv.NotFound):
        return ApiError(404, "not_found", f"key {key!r} does not exist")
    if isinstance(result, kv.PreconditionFailed):
        return ApiError(412, "precondition_failed",
                        f"precondition failed: the key is at index {result.current_index}",
                        headers={"X-Pnyx-Index": str(result.current_index)},
                        extra={"index": result.current_index})
    if isinstance(result, kv.Error):
        if result.code == kv.ErrorCode.TOO_LARGE:
            return ApiError(413, "value_too_large", result.message)
        if result.code == kv.ErrorCode.REUSED:
            return ApiError(409, "idempotency_key_reused",
                            f"{IDEMPOTENCY_HEADER} {given!r} was already used for a "
                            "different command")
        return ApiError(400, "invalid", result.message)
    return ApiError(500, "internal", f"unexpected result {type(result).__name__}")

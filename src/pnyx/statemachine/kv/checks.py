"""The rules a KV command or query must keep, shared by the node and the machine.

This module owns decoding and checking one log entry (`_parse`) or one query
(`_parse_query`) into the request or the `Error` that answers it, and
`validate` / `validate_query`, which a node calls before proposing or reading
so that a command that could only be refused never takes a slot. The machine
calls the same functions after the log, so both say the same thing. It also
owns the memos that let the machine reuse what `validate` and `validate_query`
decoded from the same bytes moments before (`take_validated`, `checked_query`).
"""

from __future__ import annotations

import msgspec

from pnyx.statemachine.kv.messages import (
    DEFAULT_COMMAND_LIMIT,
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    MAX_KEYS_LIMIT,
    AnyRequest,
    Command,
    CommandError,
    Delete,
    Error,
    ErrorCode,
    Get,
    Keys,
    Query,
    Request,
    _query_decoder,
    _request_decoder,
)


def _check_keys(query: Keys) -> str | None:
    """The reason a `Keys` query breaks a rule, or None."""
    if not 1 <= query.limit <= MAX_KEYS_LIMIT:
        return f"limit must be between 1 and {MAX_KEYS_LIMIT}, not {query.limit}"
    for what, text in (("prefix", query.prefix), ("after", query.after)):
        if _utf8_over(text, MAX_KEY_BYTES):
            return f"{what} is longer than {MAX_KEY_BYTES} bytes"
    return None


def _utf8_len(text: str) -> int:
    # surrogatepass: a str built in Python (not decoded from the wire) may hold
    # lone surrogates; count them rather than raise.
    return len(text.encode("utf-8", "surrogatepass"))


def _utf8_over(text: str, limit: int) -> bool:
    """Whether `text` is longer than `limit` bytes in UTF-8 (lone surrogates counted as 3)."""
    # A code point is at most 4 bytes in UTF-8 (a lone surrogate, 3): a str of
    # at most limit/4 characters fits without encoding it, which is nearly
    # every key and id and saves an encode per check on the apply path.
    return len(text) * 4 > limit and _utf8_len(text) > limit


# At most this many code points is within the byte limit whatever they are.
_FAST_ID_CHARS = MAX_ID_BYTES // 4
_FAST_KEY_CHARS = MAX_KEY_BYTES // 4


def _check_id(what: str, ident: str) -> str | None:
    if not ident:
        return f"{what} must not be empty"
    if _utf8_over(ident, MAX_ID_BYTES):
        return f"{what} is longer than {MAX_ID_BYTES} bytes"
    return None


def _check_command(command: Command) -> str | None:
    """The reason `command` breaks a rule, or None; the rules are the same for every replica."""
    if not command.key:
        return "key must not be empty"
    if _utf8_over(command.key, MAX_KEY_BYTES):
        return f"key is {_utf8_len(command.key)} bytes, longer than {MAX_KEY_BYTES}"
    if isinstance(command, Get):
        return None
    if command.prev_index is not None and command.prev_index < 0:
        return f"prev_index must be >= 0, not {command.prev_index}"
    if command.prev_exist is False:
        if isinstance(command, Delete):
            return "Delete with prev_exist=False can never succeed"
        if command.prev_value is not None or command.prev_index is not None:
            return "prev_exist=False contradicts prev_value/prev_index (they need the key)"
    return None


def _parse(data: bytes, limit: int) -> AnyRequest | Error:
    """Decode and check one log entry: the request, or the `Error` that answers it.

    The single source of truth for `validate` (before the log) and `apply`
    (after it), so a command refused by one is refused by the other, with the
    same message.
    """
    if len(data) > limit:
        return Error(
            f"command is {len(data)} bytes, over the limit of {limit}", ErrorCode.TOO_LARGE
        )
    try:
        request = _request_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:
        # ValueError: msgspec raises UnicodeDecodeError for a str that is not UTF-8.
        # msgspec's message names the offending field; it depends only on the
        # bytes (and the msgspec version, which every replica must share anyway
        # since it defines the encoding).
        return Error(f"malformed command: {exc}", ErrorCode.MALFORMED)
    if type(request) is Request:
        # The common case, cheaply: a request that passes every check below
        # without any UTF-8 length to count (see `_utf8_over`).
        ident = request.client_id
        command = request.command
        key = command.key
        if (
            ident and len(ident) <= _FAST_ID_CHARS and request.seq >= 0
            and key and len(key) <= _FAST_KEY_CHARS
            and (type(command) is Get
                 or (command.prev_index is None and command.prev_exist is None))
        ):
            return request
    if isinstance(request, Request):
        reason = _check_id("client_id", request.client_id)
        if reason is None and request.seq < 0:
            reason = f"seq must be >= 0, not {request.seq}"
    else:
        reason = _check_id("idempotency_key", request.idempotency_key)
    if reason is None:
        reason = _check_command(request.command)
    if reason is not None:
        return Error(reason, ErrorCode.INVALID)
    return request


# The requests `validate` passed lately, decoded, for `KVMachine.apply` (`take_validated`):
# the leader checks a command when its client submits it and applies the very same
# bytes once they are chosen, and decoding and checking them twice was a fifth of what
# applying cost the leader. Why this never changes an answer: `_parse(data, limit)` is a
# pure function of the bytes and the limit, and the limit only decides TOO_LARGE from
# `len(data)`; so a request `_parse` passed under one limit is what it gives for these
# bytes under any limit >= len(data), and `take_validated` is only asked for bytes
# within the machine's own limit (above it the machine parses, and answers TOO_LARGE as
# before). Requests are frozen structs, so the caller of `validate` and the machine may
# share one. Keyed by content, so equal bytes from elsewhere hit as well, rightly.
# Bounded: a command validated but never chosen (a deposed leader, a client gone) stays
# until the memo is full, which empties it; only small commands are kept, so what it
# holds stays small (~`_VALIDATED_MAX` * 2 * `_VALIDATED_BYTES` at worst).
_validated: dict[bytes, AnyRequest] = {}
_VALIDATED_MAX = 4096
_VALIDATED_BYTES = 2048


def validate(command: bytes, limit: int = DEFAULT_COMMAND_LIMIT) -> AnyRequest:
    """Check a command *before* proposing it; return the decoded request or raise `CommandError`.

    A node calls this when a client submits a command, so that a command that
    could only ever be answered with an error never takes a slot in the log.
    `apply` makes the same checks (a command may reach the log by another
    path), so passing `validate` is not required for safety, only for tidiness.
    """
    parsed = _parse(command, limit)
    if isinstance(parsed, Error):
        raise CommandError(ErrorCode(parsed.code), parsed.message)
    if type(command) is bytes and len(command) <= _VALIDATED_BYTES:
        if len(_validated) >= _VALIDATED_MAX:
            _validated.clear()
        _validated[command] = parsed
    return parsed


def take_validated(command: bytes) -> AnyRequest | None:
    """`_parse(command, limit)` for any limit >= len(command), if `validate` passed these
    bytes lately (once: the memo forgets them); else None. See `_validated`."""
    if _validated and type(command) is bytes:
        return _validated.pop(command, None)
    return None


def _parse_query(data: bytes, limit: int | None) -> Query | Error:
    """Decode and check one query: the query, or the `Error` that answers it.

    The single source of truth for `validate_query` (before a read is started)
    and `KVMachine.query` (which answers it), as `_parse` is for commands.
    """
    if limit is not None and len(data) > limit:
        return Error(f"query is {len(data)} bytes, over the limit of {limit}",
                     ErrorCode.TOO_LARGE)
    try:
        query = _query_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:
        return Error(f"malformed query: {exc}", ErrorCode.MALFORMED)
    reason = _check_keys(query) if isinstance(query, Keys) else _check_command(query)
    if reason is not None:
        return Error(reason, ErrorCode.INVALID)
    return query


# The queries `validate_query` passed lately, decoded, for `checked_query`: the node
# checks a read's query as it arrives and the machine answers the same bytes moments
# later, and decoding them twice was a third of what a linearizable read at the leader
# cost in Python. A pure function of the bytes, so shared; bounded (cleared when full).
_checked: dict[bytes, Query] = {}
_CHECKED_MAX = 4096


def validate_query(query: bytes, limit: int | None = None) -> Query:
    """Check a query *before* reading; return it decoded or raise `CommandError`.

    The rules `KVMachine.query` answers by, so a read that could only be
    answered with an error is refused before it costs a read-index round.
    `limit` bounds the encoded query (`ErrorCode.TOO_LARGE`); None: no bound.
    """
    parsed = _parse_query(query, limit)
    if isinstance(parsed, Error):
        raise CommandError(ErrorCode(parsed.code), parsed.message)
    if type(query) is bytes:
        if len(_checked) >= _CHECKED_MAX:
            _checked.clear()
        _checked[query] = parsed
    return parsed


def checked_query(query: bytes) -> Query | Error:
    """`_parse_query(query, None)`, taken from `validate_query`'s memo when it passed
    these bytes (with any limit: a stricter check than none), once."""
    if type(query) is bytes:
        parsed = _checked.pop(query, None)
        if parsed is not None:
            return parsed
    return _parse_query(query, None)

"""Reading an HTTP request of the API: its key, query parameters and headers, within limits.

This module owns the request limits (`MAX_URL_BYTES`, `MAX_HEADER_BYTES`,
`MAX_HEADERS`, `MAX_IDEMPOTENCY_KEY`), the parameters each route takes, the
methods the metrics count by name (`COUNTED_METHODS`), and
the parsing that turns a path, a query string or the `Idempotency-Key` header
into checked values, raising `ApiError` (400) for bad input. Keys and values
are percent-decoded to bytes, then read as strict UTF-8.
"""

from __future__ import annotations

import uuid
from typing import Any, Final, NoReturn
from urllib.parse import unquote_to_bytes

from aiohttp import web

from pnyx.api.http_errors import ApiError
from pnyx.protocol.multipaxos import READ_MODES, ReadMode
from pnyx.statemachine import kv

MAX_INT: Final = (1 << 63) - 1  # MessagePack carries 64-bit integers; larger is bad input
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"

# What the HTTP parser takes: a request line (method, URL, version) up to MAX_URL_BYTES,
# each header up to MAX_HEADER_BYTES, at most MAX_HEADERS of them. The two sizes differ
# by design: the parser's error says which limit was hit, so the answer can say which.
MAX_URL_BYTES: Final = 8192
MAX_HEADER_BYTES: Final = 8190
MAX_HEADERS: Final = 128

# Idempotency keys are namespaced so that a key a client chose can never
# collide with one this layer generated, nor with keys other callers of the
# machine (embedded users) put in the log.
_CLIENT_KEY_PREFIX: Final = "h:"
_GENERATED_KEY_PREFIX: Final = "g:"
MAX_IDEMPOTENCY_KEY: Final = kv.MAX_ID_BYTES - len(_CLIENT_KEY_PREFIX)

# The methods counted by name in the metrics; any other is counted as "other", so that the
# labels stay bounded whatever clients send.
COUNTED_METHODS: Final = frozenset({"GET", "PUT", "DELETE", "POST", "HEAD", "OPTIONS", "PATCH"})

WRITE_PARAMS: Final = frozenset({"prev_value", "prev_index", "prev_exist"})
GET_PARAMS: Final = frozenset({"consistency"})
LIST_PARAMS: Final = frozenset({"prefix", "after", "limit", "consistency"})


def _bad(code: str, message: str) -> NoReturn:
    raise ApiError(400, code, message)


def _unquote(raw: str, what: str, *, plus_is_space: bool) -> bytes:
    if plus_is_space:
        raw = raw.replace("+", " ")
    try:
        return unquote_to_bytes(raw)
    except UnicodeError:
        # The HTTP parser may hand over lone surrogates for raw non-UTF-8 bytes
        # in the request line; unquote_to_bytes cannot encode them.
        _bad("bad_param" if what != "key" else "bad_key", f"{what} is not valid UTF-8")


def _utf8(data: bytes, what: str, code: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _bad(code, f"{what} is not valid UTF-8")


def parse_key(request: web.Request) -> str:
    """The key named by the path, checked as the machine would check it."""
    return key_from_path(request.rel_url.raw_path)


def key_from_path(raw_path: str) -> str:
    """The key named by a raw (still percent-encoded) path `/v1/kv/KEY`, checked as the
    machine would check it; any server's."""
    # Split the *raw* path: "/" separates segments there, while an encoded
    # "%2F" is part of the key. Splitting the decoded path would conflate them,
    # and yarl leaves undecodable escapes like %FF in place.
    parts = raw_path.split("/", 3)
    raw = parts[3] if len(parts) == 4 else ""
    key = _utf8(_unquote(raw, "key", plus_is_space=False), "key", "bad_key")
    if not key:
        _bad("bad_key", "key must not be empty")
    size = len(key.encode("utf-8"))
    if size > kv.MAX_KEY_BYTES:
        _bad("bad_key", f"key is {size} bytes, longer than {kv.MAX_KEY_BYTES}")
    return key


def parse_params(request: web.Request, allowed: frozenset[str]) -> dict[str, bytes]:
    """The query string as name -> raw bytes; unknown or repeated names are bad input."""
    return params_from_query(request.rel_url.raw_query_string, allowed)


def params_from_query(raw_query: str, allowed: frozenset[str]) -> dict[str, bytes]:
    """A raw query string as name -> raw bytes; unknown or repeated names are bad input."""
    params: dict[str, bytes] = {}
    if not raw_query:
        return params
    for part in raw_query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name_bytes = _unquote(raw_name, "parameter name", plus_is_space=True)
        name = name_bytes.decode("utf-8", "backslashreplace")
        if name not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            _bad("bad_param", f"unknown query parameter {name!r} (expected: {expected})")
        if name in params:
            _bad("bad_param", f"query parameter {name!r} given more than once")
        params[name] = _unquote(raw_value, name, plus_is_space=True)
    return params


def int_param(params: dict[str, bytes], name: str, default: int | None,
               lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.decode("ascii", "replace")
    # Digits only: int() would also take "+5", " 5", "5_000" and "٥".
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not lo <= int(text) <= hi:
        _bad("bad_param", f"{name} must be an integer from {lo} to {hi}, not {text[:40]!r}")
    return int(text)


def _bool_param(params: dict[str, bytes], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    text = raw.decode("ascii", "replace").lower()
    if text not in ("true", "false"):
        _bad("bad_param", f"{name} must be true or false, not {text[:40]!r}")
    return text == "true"


def text_param(params: dict[str, bytes], name: str) -> str:
    text = _utf8(params.get(name, b""), name, "bad_param")
    if len(text.encode("utf-8")) > kv.MAX_KEY_BYTES:
        _bad("bad_param", f"{name} is longer than {kv.MAX_KEY_BYTES} bytes")
    return text


def parse_consistency(params: dict[str, bytes]) -> ReadMode:
    raw = params.get("consistency", b"linearizable").decode("utf-8", "replace")
    for mode in READ_MODES:
        if raw == mode:
            return mode
    _bad("bad_param",
         f"consistency must be one of {', '.join(READ_MODES)}, not {raw[:40]!r}")


def parse_conditions(params: dict[str, bytes]) -> dict[str, Any]:
    """`prev_value`, `prev_index`, `prev_exist` as keyword arguments of `Put`/`Delete`."""
    return {
        "prev_value": params.get("prev_value"),
        "prev_index": int_param(params, "prev_index", None, 0, MAX_INT),
        "prev_exist": _bool_param(params, "prev_exist"),
    }


def idempotency_key(request: web.Request) -> str:
    """The request's identity in the machine's de-duplication table."""
    return idempotency_key_of(request.headers.getall(IDEMPOTENCY_HEADER, []))


def idempotency_key_of(given: list[str], fresh: str | None = None) -> str:
    """The identity of a request whose `Idempotency-Key` headers are `given`: the client's,
    or `fresh` (a unique string the server made; a random one if None) when it gave none."""
    if not given:
        return _GENERATED_KEY_PREFIX + (fresh if fresh is not None else uuid.uuid4().hex)
    if len(given) > 1:
        raise ApiError(400, "bad_header", f"{IDEMPOTENCY_HEADER} given more than once")
    key = given[0]
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise ApiError(
            400, "bad_header",
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
        )
    return _CLIENT_KEY_PREFIX + key

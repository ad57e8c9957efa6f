"""A short, bounded run of the fuzz harnesses under fuzz/ (the long coverage-guided runs
use atheris: fuzz/README.md), and the inputs those runs found, kept as regressions.

Each harness's `one_input(data)` feeds bytes to one decoder the way a node does
and raises if the outcome is anything but a clean decode or the documented
refusal. Here hypothesis draws the bytes: random, the harness's own seeds (valid
inputs), and seeds with bytes overwritten, inserted or cut.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))

import fuzz_binary
import fuzz_http
import fuzz_peer
import fuzz_store

HARNESSES = {"peer": fuzz_peer, "binary": fuzz_binary, "http": fuzz_http, "store": fuzz_store}
SHORT = settings(max_examples=150, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mutated(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(seed)
    for kind, pos, byte in edits:
        at = pos % (len(data) + 1)
        if kind == 0 and at < len(data):
            data[at] = byte
        elif kind == 1:
            data.insert(at, byte)
        else:
            del data[at:at + byte % 8]
    return bytes(data)


def inputs(harness: ModuleType) -> Any:
    seeds = harness.seeds()
    edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4096), st.integers(0, 255)),
                     max_size=6)
    return st.one_of(
        st.binary(max_size=300),
        st.sampled_from(seeds),
        st.builds(_mutated, st.sampled_from(seeds), edits),
    )


@pytest.mark.parametrize("name", list(HARNESSES))
def test_every_seed_of_a_harness_is_read_cleanly(name: str) -> None:
    harness = HARNESSES[name]
    for seed in harness.seeds():
        harness.one_input(seed)


@SHORT
@given(data=inputs(fuzz_peer))
def test_peer_frames_end_in_a_message_stepped_or_a_refusal(data: bytes) -> None:
    fuzz_peer.one_input(data)


@SHORT
@given(data=inputs(fuzz_binary))
def test_binary_client_bytes_end_in_answers_or_a_closed_connection(data: bytes) -> None:
    fuzz_binary.one_input(data)


@SHORT
@given(data=inputs(fuzz_http))
def test_http_bytes_end_in_answers_in_the_documented_shape(data: bytes) -> None:
    fuzz_http.one_input(data)


@SHORT
@given(data=inputs(fuzz_store))
def test_stored_bytes_end_in_a_state_or_the_stores_one_line_error(data: bytes) -> None:
    fuzz_store.one_input(data)


# ------------------------------------------------------------------ found by fuzzing


def test_a_damaged_schema_whose_sqlite_error_is_not_utf8_is_the_stores_one_line_error() -> None:
    """fuzz_store, bytes overwritten: SQLite's error quoted the damaged schema, and
    sqlite3 failed to decode it (a UnicodeDecodeError traceback, not a StoreError)."""
    fuzz_store.one_input(b"\x02|x\x8a\xfb\xe4\xb4\x0c~\xedG\x9dz=\x89")


@pytest.mark.parametrize("data", [
    # rows with a right CRC: a last_round row below 0, an accepted row with a round
    # beyond MAX_ROUND; the store handed them to the replica as they were
    b"\x07[BVx@\xcc$j)R\x8a\x9e\x14h\x19_\rsf\xd2",
    b"\x07\xb4\xaez\x99\x97^KP\xaf!\xa2\xa0\xd8\xfb@lq\x1a$M\x81\xbc\xb9\xcf\xe6\xa78\xdd\x82U"
    b"\xa5\xcc\x89z.\x96Ywy\x00\xcb\x91<\x9d\xe4\xc5X }M.\xdb`\xc2\xcf}\xeac\xf2",
])
def test_a_stored_round_or_slot_out_of_range_is_refused_as_damage(data: bytes) -> None:
    fuzz_store.one_input(data)


def test_a_request_naming_http_2_1_is_answered_in_the_documented_shape() -> None:
    """fuzz_http under atheris: aiohttp answers in whatever version the request names
    (`HTTP/2.1 412 ...`), which the harness first took for a broken answer. The answer
    is aiohttp's choice, and its status and JSON body are ours: checked, and kept."""
    fuzz_http.one_input(b"\0DELETE /v1/kv/a?prev_index=1 HTTP/2.1\r\nHost: x\r\n\r\n")


def test_a_client_gone_before_its_body_arrived_is_not_an_internal_error() -> None:
    """fuzz_http under atheris: a chunked PUT whose connection closed mid-body was
    logged as an unhandled error and counted a 500 (a ConnectionResetError from the
    body read); now a 400 nobody reads, logged at INFO."""
    fuzz_http.one_input(b"\0PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n1\r\nx\r\n2\r\n\r\n")


def test_a_body_aiohttps_python_parser_refuses_mid_read_is_a_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fuzz_http under atheris, with aiohttp's Python parser (what runs where its C
    extension is missing): a chunk-size line refused after the handler had begun reading
    the body reached it as an exception, answered 500 with a traceback logged."""
    import aiohttp.http_parser
    import aiohttp.web_protocol

    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser",
                        aiohttp.http_parser.HttpRequestParserPy)
    fuzz_http.one_input(b"\x04PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n1\x97\nx\r\n1\r\n\r\n")
    fuzz_http.one_input(b"\x04PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n1\r\nxx\r\n0\r\n\r\n")
    # ... and one left unread behind a 404, which aiohttp drains after the answer: it
    # logged the client's malformed body as an unhandled exception.
    fuzz_http.one_input(b".PUT /v0/kv" + b"%" * 53 + b"/b HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\x1a0\r\n\r\n")
    fuzz_http.one_input(b"\x06PUT /v1/nv/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n" + bytes.fromhex("00000000fbf5ab8d9e910000" + "ff" * 32
                                                      + "730000000000000000660d0a4554"))

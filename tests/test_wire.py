"""Specs of `pnyx.wire`: the one framing (peers and clients alike) and what it must not import."""

from __future__ import annotations

import random
import socket
import subprocess
import sys

import pytest

from pnyx import wire
from pnyx.wire.framing import HEADER, FrameDecoder, FrameTooLarge, encode_frame, read_frame


def payloads(n: int, rng: random.Random) -> list[bytes]:
    return [bytes([i % 256]) * rng.choice([0, 1, 3, 4, 5, 100, 5000]) for i in range(n)]


def test_a_frame_is_a_big_endian_length_then_the_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert HEADER == 4


@pytest.mark.parametrize("seed", range(5))
def test_frames_split_anywhere_come_out_whole_and_in_order(seed: int) -> None:
    rng = random.Random(seed)
    sent = payloads(200, rng)
    stream = b"".join(encode_frame(p) for p in sent)
    decoder = FrameDecoder(1 << 20)
    got: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 4, 5, 7, 64, 4096, 100_000])
        decoder.feed(stream[pos:pos + step])
        pos += step
        got.extend(bytes(f) for f in decoder.frames())
    assert got == sent
    assert decoder.buffered() == 0


def test_a_consumer_that_stops_early_resumes_where_it_stopped() -> None:
    sent = payloads(50, random.Random(1))
    decoder = FrameDecoder(1 << 20)
    decoder.feed(b"".join(encode_frame(p) for p in sent)[:-1])  # the last frame incomplete
    got: list[bytes] = []
    while True:
        taken = 0
        for frame in decoder.frames():
            got.append(bytes(frame))
            taken += 1
            if taken == 3:
                break
        if taken == 0:
            break
    assert got == sent[:-1]
    decoder.feed(encode_frame(sent[-1])[-1:])  # bytes fed while paused join the rest
    assert [bytes(f) for f in decoder.frames()] == sent[-1:]


def test_an_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    decoder = FrameDecoder(10)
    decoder.feed(encode_frame(b"x" * 10) + wire.LENGTH.pack(11))
    frames = decoder.frames()
    assert bytes(next(frames)) == b"x" * 10
    with pytest.raises(FrameTooLarge) as caught:
        next(frames)
    assert (caught.value.length, caught.value.limit) == (11, 10)
    assert "11 bytes is over the limit of 10" in str(caught.value)
    assert decoder.buffered() == 0


def test_the_limit_may_change_between_frames() -> None:
    # A peer's Hello is read under a small limit, what follows under a larger one.
    decoder = FrameDecoder(4)
    decoder.feed(encode_frame(b"helo") + encode_frame(b"x" * 100))
    frames = decoder.frames()
    assert bytes(next(frames)) == b"helo"
    decoder.max_frame = 100
    assert bytes(next(frames)) == b"x" * 100


def test_read_frame_from_a_blocking_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_frame(b"hello") + wire.LENGTH.pack(1 << 30))
        assert read_frame(b, 100) == b"hello"
        with pytest.raises(FrameTooLarge):
            read_frame(b, 100)
        a.sendall(wire.LENGTH.pack(5) + b"ab")
        a.close()
        with pytest.raises(ConnectionError):
            read_frame(b, 100)


def test_a_response_carries_its_error_code_as_a_field() -> None:
    response = wire.ClientResponse(7, False, error="no leader", code=wire.ErrorCode.UNAVAILABLE)
    decoded = wire.response_decoder.decode(wire.frame(response)[HEADER:])
    assert decoded == response and decoded.code is wire.ErrorCode.UNAVAILABLE


def test_the_fast_client_and_the_wire_import_no_server_code() -> None:
    code = ("import sys, pnyx, pnyx.wire, pnyx.client; pnyx.FastClient; pnyx.AsyncFastClient; "
            "print(sorted(m for m in sys.modules if m.startswith(('pnyx.api', 'pnyx.node', "
            "'pnyx.protocol', 'aiohttp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

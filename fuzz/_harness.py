"""What every fuzz harness under fuzz/ shares: how its input is laid out, the fake
transport it reads through, and how it runs under atheris.

A harness module defines `one_input(data: bytes) -> None`: it feeds `data` to one
decoder the way a node does and returns if the outcome is a clean decode or the
documented refusal, or raises (AssertionError, or whatever escaped) if not. The
same function is the atheris target (`main`) and the body of the short
hypothesis run in tests/test_fuzz.py.

Input layout (plain bytes, so that atheris and hypothesis share it): the first
byte is `flags`, the rest the body. `split(flags, body)` cuts the body into the
chunks a connection would deliver (one chunk, or pieces of 1 to 64 bytes), and
`frames_of(body)` reads the body as payloads with a 2-byte length each, for a
harness that frames them itself so the fuzzer's bytes reach the message decoder.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_U16 = struct.Struct(">H")


def split(flags: int, body: bytes) -> Iterator[bytes]:
    """`body` as a connection might deliver it: whole (`flags` bits 2-4 zero) or in
    chunks of (those bits) * 8 bytes or fewer."""
    size = ((flags >> 2) & 7) * 8
    if size == 0:
        yield body
        return
    for i in range(0, len(body), size):
        yield body[i:i + size]


def frames_of(body: bytes) -> list[bytes]:
    """`body` read as payloads, each after a 2-byte big-endian length (the last one
    takes what is left if it is short)."""
    out = []
    pos = 0
    while pos + 2 <= len(body):
        (n,) = _U16.unpack_from(body, pos)
        out.append(body[pos + 2:pos + 2 + n])
        pos += 2 + n
    return out


class FakeTransport(asyncio.Transport):
    """Collects what a protocol writes; remembers whether it closed the connection."""

    def __init__(self, peername: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self._peer = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self._peer}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:  # writes after close are dropped, as asyncio's are
            self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0


def main(one_input: Callable[[bytes], None], seeds: list[bytes], *, quiet: bool = True) -> None:
    """Run `one_input` under atheris with the command line's libFuzzer options. A
    corpus directory named on the command line that is missing or empty is first
    filled with `seeds` (valid inputs, for the fuzzer to mutate). `quiet` silences
    logging (refusals are logged, and checked by the harness itself)."""
    import atheris

    if quiet:
        logging.disable(logging.CRITICAL)

    for arg in sys.argv[1:]:
        if not arg.startswith("-") and not Path(arg).is_file():  # a file: replay it
            corpus = Path(arg)
            corpus.mkdir(parents=True, exist_ok=True)
            if not any(corpus.iterdir()):
                for i, seed in enumerate(seeds):
                    (corpus / f"seed-{i:03d}").write_bytes(seed)

    atheris.instrument_all()  # pnyx, msgspec's Python side, asyncio, aiohttp: all loaded
    atheris.Setup(sys.argv, lambda data: one_input(bytes(data)))
    atheris.Fuzz()

"""The hand-driven harness for scenario tests of the pure `Replica`: a tiny network
(`Net`), a state machine that remembers what it applied (`Memo`), and filters that
pick which in-flight messages a step delivers or drops. Test files import it from
here; no test file imports another."""

from __future__ import annotations


class Memo:
    """A small deterministic state machine: `b"k=v"` sets k, `query(b"k")` reads it.

    It remembers every `(index, command)` it applied, so a test can see the
    order and that nothing was applied twice."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[tuple[int, bytes]] = []

    def apply(self, command: bytes, index: int) -> bytes:
        self.log.append((index, command))
        key, _, value = command.partition(b"=")
        self.data[key] = value
        return b"applied " + command

    def query(self, query: bytes) -> bytes:
        return self.data.get(query, b"-")

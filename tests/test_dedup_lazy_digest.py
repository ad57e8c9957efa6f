"""Specs: the de-duplication table computes a command's digest only when it is needed.

The KV machine hands the table the decoded command as the token of its digest
(`pnyx.statemachine.dedup`); the digest is computed to compare a retry with the
remembered request and to list entries for a snapshot, and at no other time.
"""

from __future__ import annotations

import hashlib

import msgspec

from pnyx.statemachine.dedup import DedupTable, Verdict
from pnyx.statemachine.kv import KVMachine, Ok, Put, Request, decode_result


class CountingDigest:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token: object) -> bytes:
        self.calls += 1
        return hashlib.blake2b(repr(token).encode(), digest_size=16).digest()


def test_new_requests_are_recorded_without_computing_a_digest() -> None:
    digest = CountingDigest()
    table = DedupTable(2, digest)
    for stamp in range(1, 10):
        client = f"c{stamp % 3}"
        assert table.check("client", client, stamp, "token", stamp)[0] is Verdict.NEW
        table.record("client", client, stamp, "token", b"r", stamp)
    assert digest.calls == 0


def test_a_retry_is_told_from_a_reused_seq_by_the_digests_of_the_tokens() -> None:
    digest = CountingDigest()
    table = DedupTable(4, digest)
    table.record("client", "c", 1, ("put", "k", b"v"), b"first", 1)
    verdict, entry = table.check("client", "c", 1, ("put", "k", b"v"), 2)
    assert verdict is Verdict.DUPLICATE and entry is not None and entry.result == b"first"
    assert table.check("client", "c", 1, ("put", "k", b"w"), 3)[0] is Verdict.REUSED
    assert digest.calls == 4
    # A digest given as bytes (as a snapshot holds it) equals the token's.
    assert table.check("client", "c", 1, digest(("put", "k", b"v")), 4)[0] is Verdict.DUPLICATE


def test_entries_and_captures_list_the_digest_of_each_token() -> None:
    digest = CountingDigest()
    table = DedupTable(4, digest)
    table.record("client", "c", 1, "token-c", b"r", 1)
    table.record("key", "c", 0, "token-k", b"r", 2)  # same ident, other kind: its own entry
    capture = table.capture()
    table.record("client", "c", 2, "later", b"r", 3)
    assert [(e.kind, e.digest) for e in capture] == [
        ("client", digest("token-c")), ("key", digest("token-k"))]
    assert [(e.kind, e.digest) for e in table.entries()] == [
        ("key", digest("token-k")), ("client", digest("later"))]


def test_a_machine_given_a_table_that_cannot_digest_still_tells_retries() -> None:
    # The simulator's mutants put a plain table in place of the machine's own.
    machine = KVMachine()
    machine._dedup = DedupTable(8)
    command = msgspec.msgpack.encode(Request("c", 1, Put("k", b"v")))
    assert decode_result(machine.apply(command, 1)) == Ok(1)
    assert decode_result(machine.apply(command, 2)) == Ok(1)  # answered from the table
    assert machine.read("k") == (b"v", 1)
    assert isinstance(machine.snapshot(), bytes)

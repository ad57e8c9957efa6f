"""Specs: the KV machine's fast apply answers every log byte for byte as the plain rules do.

`KVMachine.apply` has a fast path (inlined checks, a lazily computed digest
in the de-duplication table, `validate`'s memo of decoded requests). Every
replica must compute the same results and snapshots from the same log, and a
group may run old and new code side by side during an upgrade, so the fast
path may not change a single byte. `Reference` below is the machine as it was
written before the fast path, kept plain: each command parsed and checked in
full, a digest of the command computed at once, the table an LRU of
`DedupEntry`. Random logs (duplicates, stale and reused seqs, idempotency
keys, preconditions, oversized and malformed entries, ids and keys of
multi-byte characters around the byte limits, the same command encoded in
other ways) go through both, and every result and every snapshot must be equal.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pnyx.statemachine import SafeApply
from pnyx.statemachine.dedup import DedupEntry
from pnyx.statemachine.kv import (
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    CommandError,
    Delete,
    Error,
    ErrorCode,
    Get,
    IdempotentRequest,
    KVMachine,
    NotFound,
    Ok,
    PreconditionFailed,
    Put,
    Request,
    Result,
    checks,
    validate,
)
from pnyx.statemachine.kv import _request_decoder as request_decoder
from pnyx.statemachine.kv.snapshot import SHARDS, Item, encode_chunks, shard_of

# --- the reference: the rules, written plainly ---------------------------------


def _ref_utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _ref_check_id(what: str, ident: str) -> str | None:
    if not ident:
        return f"{what} must not be empty"
    if _ref_utf8_len(ident) > MAX_ID_BYTES:
        return f"{what} is longer than {MAX_ID_BYTES} bytes"
    return None


def _ref_check_command(command: Put | Get | Delete) -> str | None:
    if not command.key:
        return "key must not be empty"
    if _ref_utf8_len(command.key) > MAX_KEY_BYTES:
        return f"key is {_ref_utf8_len(command.key)} bytes, longer than {MAX_KEY_BYTES}"
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


def ref_parse(data: bytes, limit: int) -> Request | IdempotentRequest | Error:
    if len(data) > limit:
        return Error(
            f"command is {len(data)} bytes, over the limit of {limit}", ErrorCode.TOO_LARGE
        )
    try:
        request = request_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:
        return Error(f"malformed command: {exc}", ErrorCode.MALFORMED)
    if isinstance(request, Request):
        reason = _ref_check_id("client_id", request.client_id)
        if reason is None and request.seq < 0:
            reason = f"seq must be >= 0, not {request.seq}"
    else:
        reason = _ref_check_id("idempotency_key", request.idempotency_key)
    if reason is None:
        reason = _ref_check_command(request.command)
    if reason is not None:
        return Error(reason, ErrorCode.INVALID)
    return request


def _ref_digest(command: Put | Get | Delete) -> bytes:
    return hashlib.blake2b(msgspec.msgpack.encode(command), digest_size=16).digest()


def _encode(result: Result) -> bytes:
    return msgspec.msgpack.encode(result)


class Reference:
    """The KV machine's rules for `apply` and its snapshot, without any shortcut."""

    def __init__(self, max_clients: int, command_limit: int) -> None:
        self.max_clients = max_clients
        self.command_limit = command_limit
        self.data: dict[str, tuple[bytes, int]] = {}
        self.sessions: OrderedDict[tuple[str, str], DedupEntry] = OrderedDict()
        self.applied = 0

    def apply(self, command: bytes, index: int) -> bytes:
        self.applied = index
        parsed = ref_parse(command, self.command_limit)
        if isinstance(parsed, Error):
            return _encode(parsed)
        if isinstance(parsed, Request):
            kind, ident, seq = "client", parsed.client_id, parsed.seq
        else:
            kind, ident, seq = "key", parsed.idempotency_key, 0
        digest = _ref_digest(parsed.command)
        slot = (kind, ident)
        entry = self.sessions.get(slot)
        if entry is not None and seq == entry.seq and digest == entry.digest:
            self.sessions.move_to_end(slot)
            return entry.result
        if entry is not None and seq < entry.seq:
            return _encode(Error(
                f"stale request: client {ident!r} is at seq {entry.seq}; "
                f"the result of seq {seq} is no longer kept", ErrorCode.STALE))
        if entry is not None and seq == entry.seq:
            what = f"seq {seq} of client {ident!r}" if kind == "client" else f"key {ident!r}"
            return _encode(Error(
                f"{what} was already used for a different command", ErrorCode.REUSED))
        result = _encode(self._execute(parsed.command, index))
        self.sessions[slot] = DedupEntry(kind, ident, seq, digest, result)  # type: ignore[arg-type]
        self.sessions.move_to_end(slot)
        while len(self.sessions) > self.max_clients:
            self.sessions.popitem(last=False)
        return result

    def _execute(self, command: Put | Get | Delete, index: int) -> Result:
        item = self.data.get(command.key)
        if isinstance(command, Get):
            return NotFound() if item is None else Ok(item[1], item[0])
        if item is None:
            if (command.prev_exist is True or command.prev_value is not None
                    or command.prev_index is not None):
                return NotFound()
        elif (command.prev_exist is False
              or (command.prev_value is not None and command.prev_value != item[0])
              or (command.prev_index is not None and command.prev_index != item[1])):
            return PreconditionFailed(item[1], item[0])
        if isinstance(command, Put):
            self.data[command.key] = (command.value, index)
            return Ok(index)
        if item is None:
            return NotFound()
        del self.data[command.key]
        return Ok(index)

    def snapshot(self) -> bytes:
        shards: list[dict[str, Item] | None] = [{} for _ in range(SHARDS)]
        for key, (value, mod_index) in self.data.items():
            shard = shards[shard_of(key)]
            assert shard is not None
            shard[key] = Item(value, mod_index)
        return b"".join(encode_chunks(self.applied, list(self.sessions.values()), shards))


# --- the logs: hand-made MessagePack, so that anything can be said -------------


def _str(raw: bytes) -> bytes:
    n = len(raw)
    if n < 32:
        return bytes([0xA0 | n]) + raw
    if n < 256:
        return b"\xd9" + bytes([n]) + raw
    return b"\xda" + n.to_bytes(2, "big") + raw


def _bin(raw: bytes) -> bytes:
    return b"\xc4" + bytes([len(raw)]) + raw if len(raw) < 256 else \
        b"\xc5" + len(raw).to_bytes(2, "big") + raw


def _int(n: int, wide: bool) -> bytes:
    # `wide`: a valid but not the shortest encoding (the command decodes the same,
    # its bytes differ): the digest must be of the command, not of these bytes.
    if wide:
        return b"\xd3" + n.to_bytes(8, "big", signed=True)
    return msgspec.msgpack.encode(n)


def _text(text: str) -> bytes:
    # surrogatepass: a lone surrogate makes invalid UTF-8, which must be refused.
    return _str(text.encode("utf-8", "surrogatepass"))


def _array(items: list[bytes]) -> bytes:
    return bytes([0x90 | len(items)]) + b"".join(items)


def _opt(value: object, wide: bool) -> bytes:
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return _int(value, wide)
    assert isinstance(value, bytes)
    return _bin(value)


# Ids and keys around the byte limits, in 1-, 2-, 3- and 4-byte characters, and
# with a lone surrogate; the fast path decides on code points (len * 4 <= limit).
# Most are plain, so that logs also hold runs of valid commands and their retries.
_IDS = st.one_of(
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from(["", "é" * 128, "é" * 129, "😀" * 64, "😀" * 65,
                     "a" * 256, "a" * 257, "€" * 85, "€" * 86, "x\ud800"]),
)
_KEYS = st.one_of(
    st.sampled_from(["k", "k2", "k3"]),
    st.sampled_from(["k", "k2", "k3"]),
    st.sampled_from(["k", "k2", "k3"]),
    st.sampled_from(["", "😀" * 256, "😀" * 257, "é" * 512, "é" * 513,
                     "a" * 1024, "a" * 1025, "€" * 341, "€" * 342, "k\udfff"]),
)
_VALUES = [b"", b"v1", b"v2", b"x" * 200]


@st.composite
def _command(draw: st.DrawFn) -> bytes:
    wide = draw(st.booleans())
    tag = draw(st.sampled_from(["put", "put", "put", "get", "delete"]))
    key = _text(draw(_KEYS))
    conditions = [_opt(None, wide)] * 3
    if draw(st.integers(0, 2)) == 0:  # one in three commands has conditions
        conditions = [
            _opt(draw(st.one_of(st.none(), st.sampled_from(_VALUES))), wide),
            _opt(draw(st.one_of(st.none(), st.integers(-1, 12))), wide),
            _opt(draw(st.sampled_from([None, None, True, False])), wide),
        ]
    # Trailing conditions may be left out (they default to None): the same
    # command in fewer bytes.
    conditions = conditions[:draw(st.integers(0, 3))] if draw(st.booleans()) else conditions
    if tag == "get":
        return _array([_text("get"), key])
    if tag == "delete":
        return _array([_text("delete"), key, *conditions])
    value = _bin(draw(st.sampled_from(_VALUES)))
    return _array([_text("put"), key, value, *conditions])


@st.composite
def _entry(draw: st.DrawFn, history: list[bytes]) -> bytes:
    choice = draw(st.integers(0, 19))
    if choice <= 2 and history:
        return draw(st.sampled_from(history))  # a retry: the very same bytes
    if choice == 3:
        return draw(st.binary(max_size=24))  # anything at all
    if choice == 4 and history:
        data = draw(st.sampled_from(history))  # a cut-off or bent request
        return data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=3))
    command = draw(_command())
    if choice <= 7:
        return _array([_text("idem"), _text(draw(_IDS)), command])
    seq = draw(st.integers(-1, 5))
    return _array([_text("req"), _text(draw(_IDS)),
                   _int(seq, draw(st.booleans())), command])


def _chunks_equal(chunks: Iterator[bytes], expected: bytes) -> bool:
    return b"".join(chunks) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([1, 3, 8]), st.sampled_from([200, 1100, 1200, 4000]))
def test_apply_gives_the_reference_results_and_snapshots_for_any_log(
    data: st.DataObject, max_clients: int, command_limit: int
) -> None:
    checks._validated.clear()
    machine = KVMachine(max_clients=max_clients, command_limit=command_limit)
    wrapped = SafeApply(machine)
    reference = Reference(max_clients, command_limit)
    history: list[bytes] = []
    captures: list[tuple[Iterator[bytes], bytes]] = []
    for index in range(1, data.draw(st.integers(1, 40)) + 1):
        entry = data.draw(_entry(history))
        history.append(entry)
        path = data.draw(st.sampled_from(["follower", "leader", "leader", "validated-elsewhere"]))
        if path != "follower":
            # The leader validates when the client submits (with the limit of its API,
            # not always the machine's), and applies the same bytes once chosen.
            limit = data.draw(st.sampled_from([command_limit, len(entry), len(entry) - 1, 4000]))
            expected = ref_parse(entry, limit)
            try:
                validated = validate(entry, limit)
            except CommandError as exc:
                assert isinstance(expected, Error)
                assert (exc.code, exc.message) == (expected.code, expected.message)
            else:
                assert validated == expected
            if path == "validated-elsewhere":
                entry = bytes(bytearray(entry))  # equal bytes, another object
        assert wrapped.apply(entry, index) == reference.apply(entry, index), entry
        expected_snapshot = reference.snapshot()
        assert machine.snapshot() == expected_snapshot
        assert machine.dedup_size == len(reference.sessions)
        step = data.draw(st.sampled_from(["", "", "", "capture", "restore"]))
        if step == "capture":  # written later, while the log goes on
            captures.append((machine.snapshot_chunks(), expected_snapshot))
        elif step == "restore":  # digests now come from the snapshot, not the commands
            machine.restore(expected_snapshot)
            assert machine.snapshot() == expected_snapshot
    for chunks, expected_snapshot in captures:
        assert _chunks_equal(chunks, expected_snapshot)


def _request(client: str, seq: int, command: Put | Get | Delete) -> bytes:
    return msgspec.msgpack.encode(Request(client, seq, command))


def test_a_retry_encoded_differently_is_a_duplicate_and_a_different_command_is_reused() -> None:
    machine = KVMachine()
    first = _request("c", 1, Put("k", b"v"))
    assert machine.apply(first, 1) == _encode(Ok(1))
    # The same command in other bytes (a wide seq, conditions left out): a retry.
    same = _array([_text("req"), _text("c"), _int(1, True),
                   _array([_text("put"), _text("k"), _bin(b"v")])])
    assert same != first
    assert machine.apply(same, 2) == _encode(Ok(1))
    assert machine.apply(_request("c", 1, Put("k", b"w")), 3) == _encode(Error(
        "seq 1 of client 'c' was already used for a different command", ErrorCode.REUSED))
    assert machine.read("k") == (b"v", 1)


def test_a_validated_command_applied_under_a_smaller_limit_is_too_large() -> None:
    checks._validated.clear()
    command = _request("c", 1, Put("k", b"x" * 100))
    validate(command, 4000)
    machine = KVMachine(command_limit=len(command) - 1)
    assert machine.apply(command, 1) == _encode(Error(
        f"command is {len(command)} bytes, over the limit of {len(command) - 1}",
        ErrorCode.TOO_LARGE))
    assert machine.key_count == 0


def test_the_memo_of_validated_commands_stays_bounded() -> None:
    checks._validated.clear()
    for seq in range(checks._VALIDATED_MAX * 2 + 5):
        validate(_request("never-chosen", seq, Put("k", b"v")))
    assert 0 < len(checks._validated) <= checks._VALIDATED_MAX
    validate(_request("big", 1, Put("k", b"x" * (checks._VALIDATED_BYTES + 1))))
    assert all(len(b) <= checks._VALIDATED_BYTES for b in checks._validated)
    checks._validated.clear()


@pytest.mark.parametrize("size", [10, 5000])
def test_the_dedup_table_lists_the_digest_of_each_command_however_it_keeps_it(
    size: int,
) -> None:
    machine = KVMachine(max_clients=4)
    command = Put("k", b"v" * size)
    machine.apply(_request("c", 1, command), 1)
    [entry] = machine._dedup.entries()
    assert entry.digest == _ref_digest(command)


@pytest.mark.parametrize("index", [
    1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_a_plain_put_is_answered_ok_in_the_bytes_of_ok_at_every_int_width(index: int) -> None:
    machine = KVMachine()
    assert machine.apply(_request("c", 1, Put("k", b"v")), index) == _encode(Ok(index))

"""Specs of the `Keys` query: listing keys by prefix, in order, a page at a time."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from pnyx.statemachine import (
    MAX_KEY_BYTES,
    MAX_KEYS_LIMIT,
    Delete,
    Error,
    ErrorCode,
    IdempotentRequest,
    KeyList,
    Keys,
    KVMachine,
    Ok,
    Put,
    decode_result,
    encode_keys_query,
    encode_query,
    encode_request,
)


class Store:
    """A KVMachine fed through its log, numbering slots from 1."""

    def __init__(self) -> None:
        self.machine = KVMachine()
        self.index = 0

    def put(self, key: str, value: bytes = b"v") -> int:
        self.index += 1
        command = encode_request(IdempotentRequest(f"k{self.index}", Put(key, value)))
        result = decode_result(self.machine.apply(command, self.index))
        assert isinstance(result, Ok)
        return result.index

    def delete(self, key: str) -> None:
        self.index += 1
        command = encode_request(IdempotentRequest(f"k{self.index}", Delete(key)))
        self.machine.apply(command, self.index)

    def keys(self, prefix: str = "", after: str = "", limit: int = 100) -> KeyList:
        result = decode_result(self.machine.query(encode_keys_query(prefix, after, limit)))
        assert isinstance(result, KeyList), result
        return result


def _all(store: Store, prefix: str, page: int) -> list[tuple[str, int]]:
    """Every key under `prefix`, following pages of `page` keys."""
    out: list[tuple[str, int]] = []
    after = ""
    while True:
        listing = store.keys(prefix, after, page)
        out.extend(listing.items)
        if not listing.more:
            return out
        assert listing.items, "more=True on an empty page would loop forever"
        after = listing.items[-1][0]


def test_lists_keys_in_order_with_their_mod_index() -> None:
    s = Store()
    ib = s.put("b")
    ia = s.put("a")
    ic = s.put("c")
    ia2 = s.put("a", b"again")  # an overwrite moves mod_index, not the order
    assert s.keys() == KeyList([("a", ia2), ("b", ib), ("c", ic)], more=False)
    assert ia2 > ia


def test_prefix_selects_a_contiguous_range() -> None:
    s = Store()
    for key in ["app/a", "app/b", "app", "apple", "ap", "b/app", "app/c/d"]:
        s.put(key)
    assert [k for k, _ in s.keys("app/").items] == ["app/a", "app/b", "app/c/d"]
    assert [k for k, _ in s.keys("app").items] == ["app", "app/a", "app/b", "app/c/d", "apple"]
    assert s.keys("zzz") == KeyList([], more=False)


def test_limit_and_after_paginate() -> None:
    s = Store()
    for i in range(10):
        s.put(f"k{i:02d}")
    first = s.keys(limit=4)
    assert [k for k, _ in first.items] == ["k00", "k01", "k02", "k03"] and first.more
    second = s.keys(after="k03", limit=4)
    assert [k for k, _ in second.items] == ["k04", "k05", "k06", "k07"] and second.more
    last = s.keys(after="k07", limit=4)
    assert [k for k, _ in last.items] == ["k08", "k09"] and not last.more
    # A page that ends exactly at the last key says there is no more.
    exact = s.keys(after="k05", limit=4)
    assert [k for k, _ in exact.items] == ["k06", "k07", "k08", "k09"] and not exact.more
    # `after` need not be a key that exists; it is a position.
    assert [k for k, _ in s.keys(after="k045", limit=2).items] == ["k05", "k06"]


def test_more_is_false_when_the_next_key_lacks_the_prefix() -> None:
    s = Store()
    for key in ["a1", "a2", "b1"]:
        s.put(key)
    assert s.keys("a", limit=2) == KeyList([("a1", 1), ("a2", 2)], more=False)


def test_after_before_the_prefix_starts_at_the_prefix() -> None:
    s = Store()
    for key in ["a", "m1", "m2", "z"]:
        s.put(key)
    assert [k for k, _ in s.keys("m", after="b").items] == ["m1", "m2"]
    assert s.keys("m", after="n").items == []


def test_deleted_keys_disappear_and_new_keys_appear_after_a_listing() -> None:
    s = Store()
    for key in ["a", "b", "c"]:
        s.put(key)
    assert len(s.keys().items) == 3  # builds the index
    s.delete("b")
    s.put("bb")
    s.put("a", b"new value")
    assert [k for k, _ in s.keys().items] == ["a", "bb", "c"]
    # Delete and re-create between listings: the key is there, with its new index.
    s.delete("c")
    idx = s.put("c")
    assert s.keys("c").items == [("c", idx)]


def test_many_changes_between_listings() -> None:
    s = Store()
    for i in range(50):
        s.put(f"x{i:03d}")
    s.keys()
    for i in range(0, 50, 2):
        s.delete(f"x{i:03d}")
    for i in range(50, 2000):  # past the point where the machine forgets its index
        s.put(f"x{i:04d}")
    expected = sorted(s.machine._data)
    assert [k for k, _ in _all(s, "", MAX_KEYS_LIMIT)] == expected


def test_unicode_keys_sort_by_code_point() -> None:
    s = Store()
    for key in ["é", "z", "日本", "a", "\x00"]:
        s.put(key)
    assert [k for k, _ in s.keys().items] == sorted(["é", "z", "日本", "a", "\x00"])


def test_bad_keys_queries_are_errors_not_exceptions() -> None:
    m = KVMachine()
    for query in [
        encode_keys_query(limit=0),
        encode_keys_query(limit=MAX_KEYS_LIMIT + 1),
        encode_keys_query(limit=-5),
        encode_keys_query(limit=2**64 - 1),
        encode_keys_query(prefix="p" * (MAX_KEY_BYTES + 1)),
        encode_keys_query(after="a" * (MAX_KEY_BYTES + 1)),
    ]:
        result = decode_result(m.query(query))
        assert isinstance(result, Error) and result.code == ErrorCode.INVALID
    for query in [b"", b"\xff", msgspec.msgpack.encode(["keys", 1, 2, 3]),
                  msgspec.msgpack.encode(["keys", "", "", "x"]),
                  msgspec.msgpack.encode(["nope", "k"])]:
        result = decode_result(m.query(query))
        assert isinstance(result, Error) and result.code == ErrorCode.MALFORMED


def test_get_queries_still_work() -> None:
    s = Store()
    idx = s.put("k", b"value")
    assert decode_result(s.machine.query(encode_query("k"))) == Ok(idx, b"value")


def test_a_keys_query_is_not_a_command() -> None:
    # Put into the log by mistake, it is answered with an error and changes nothing.
    m = KVMachine()
    result = decode_result(m.apply(encode_keys_query(), 1))
    assert isinstance(result, Error) and result.code == ErrorCode.MALFORMED


def test_restore_rebuilds_the_index() -> None:
    s = Store()
    for key in ["a", "b"]:
        s.put(key)
    snap = s.machine.snapshot()
    s.keys()
    s.put("c")
    s.machine.restore(snap)
    assert [k for k, _ in s.keys().items] == ["a", "b"]


def test_defaults() -> None:
    assert Keys() == Keys("", "", 100)


_ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "del", "list"]),
        st.text(alphabet="abc/", min_size=1, max_size=4),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, prefix=st.text(alphabet="abc/", max_size=2),
       page=st.integers(min_value=1, max_value=5))
def test_listing_matches_a_sorted_model(ops: list[tuple[str, str]], prefix: str,
                                        page: int) -> None:
    s = Store()
    model: dict[str, int] = {}
    for op, key in ops:
        if op == "put":
            model[key] = s.put(key)
        elif op == "del":
            s.delete(key)
            model.pop(key, None)
        else:
            expected = sorted((k, i) for k, i in model.items() if k.startswith(key))
            assert _all(s, key, page) == expected
    expected = sorted((k, i) for k, i in model.items() if k.startswith(prefix))
    assert _all(s, prefix, page) == expected

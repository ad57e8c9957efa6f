"""Membership over the HTTP API: a request read and checked, asked of the node, answered.

This module owns what both HTTP servers (`pnyx.api.http_members` for each) do
with the membership routes: the checks of a request's body and query
(`parse_add`, `parse_change`, `parse_base`, `member_id`), the node call
(`change`: `Node.change_members`, whose outcome becomes the answer) and the
view (`view`: `Node.membership_view`). The rule behind the changes is
`pnyx.protocol.multipaxos.membership`'s; this layer adds no rule of its own
but the shape of the input, so a refusal reads the same whichever member was
asked::

    GET    /v1/members                -> 200 the view (`Node.membership_view`)
    POST   /v1/members                {"id", "peer", "http"?, "learner"?, "incarnation"?,
                                       "base"?} -> 200 {"ok": true, ...view}
    POST   /v1/members/change         {"base"?, "add": [member, ...], "remove": [id, ...],
                                       "promote": [id, ...], "move": [{"id", "peer",
                                       "http"?}, ...]} -> 200 {"ok": true, ...view}
    POST   /v1/members/{id}/promote   {"base"?} (or no body) -> 200 {"ok": true, ...view}
    DELETE /v1/members/{id}           ?base=N -> 200 {"ok": true, ...view}

A member added is a learner (it never votes before it has caught up, so adding
one cannot cost the cluster its quorum); `"learner": false` (the default) lets
the leader promote it by itself once caught up, `"learner": true` keeps it a
learner until a promote. `base` is the configuration version the change is
made against (default: the latest this member knows): if another change got in
first, the answer is 409 `conflict`. Errors, in the KV API's shape
(`{"error": {"code", "message"}}`): 400 `bad_json` (a body that is not a JSON
object), 400 `bad_field` (a field unknown, missing, of the wrong type or out
of range), 400 `invalid` (the change itself refused: an id not a member or
already one, an id used before, no voter left), 409 `conflict` (`base` is not
the latest version), 409 `refused` (the leader will not propose it now: a
learner not caught up, or no live quorum after it), 503 `unavailable` with
`Retry-After` (no leader or quorum in time; `unknown` says whether the change
may still take effect, and a cut-off member names the leader).

A change whose outcome is unknown is not tried again here: unlike a key-value
write it carries no idempotency key, and a second attempt of a change that did
take effect would be refused (`conflict`, or "already a member"). The one
exception is a join retried: adding an id that is a member already under the
same non-zero `incarnation` is answered 200 as if added, so `pnyx serve --join`
and a client may ask again after a lost answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from pnyx.api.http_errors import ApiError
from pnyx.api.http_outcome import failure_error
from pnyx.api.http_parse import MAX_INT
from pnyx.protocol.multipaxos import Code
from pnyx.protocol.multipaxos.messages import Member

# A node id: what `--id` and `--cluster` take (non-negative), bounded for the wire.
MAX_NODE_ID: Final = (1 << 31) - 1
# A request's body: a change of a handful of members is a few hundred bytes.
MAX_BODY: Final = 64 << 10
# How many ids one change may name (a cluster is a handful of voters and learners).
MAX_IDS: Final = 64

ADD_FIELDS: Final = frozenset({"id", "peer", "http", "learner", "incarnation", "base"})
MEMBER_FIELDS: Final = frozenset({"id", "peer", "http", "learner", "incarnation"})
CHANGE_FIELDS: Final = frozenset({"base", "add", "remove", "promote", "move"})
MOVE_FIELDS: Final = frozenset({"id", "peer", "http"})
PROMOTE_FIELDS: Final = frozenset({"base"})
BASE_PARAMS: Final = frozenset({"base"})

# host:port, or [v6]:port, as `pnyx serve --listen` takes it (`pnyx.node.config.Address`).
_ADDRESS: Final = re.compile(r"\[([^\]\s]+)\]:(\d{1,5})|([^:\s\[\]/?#@]+):(\d{1,5})")
_ID_PATH: Final = re.compile(r"/v1/members/([0-9]{1,19})(/promote)?")


class MemberChange(NamedTuple):
    """One change, checked: what `Node.change_members` takes."""

    add: tuple[Member, ...] = ()
    remove: tuple[int, ...] = ()
    promote: tuple[int, ...] = ()
    base: int | None = None
    move: tuple[Member, ...] = ()


def _bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


# --- reading a request ---------------------------------------------------------------


def _object(body: bytes, allowed: frozenset[str], *, empty_ok: bool = False,
            ) -> dict[str, Any]:
    """The body as a JSON object with only `allowed` fields (an empty body is `{}` when
    `empty_ok`)."""
    if len(body) > MAX_BODY:
        raise ApiError(413, "value_too_large", f"the body is larger than {MAX_BODY} bytes")
    if not body.strip() and empty_ok:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("bad_json", "the body is not JSON (expected an object like "
                   '{"id": 4, "peer": "host:port"})') from None
    if not isinstance(data, dict):
        raise _bad("bad_json", f"the body must be a JSON object, not {_json_type(data)}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _bad("bad_field", f"unknown field {unknown[0]!r} (expected: "
                   f"{', '.join(sorted(allowed))})")
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _int(data: Mapping[str, Any], name: str, hi: int, *, what: str | None = None,
         required: bool = False, default: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise _bad("bad_field", f"{what or name} is missing")
        return default
    # A JSON true is a Python int: not a number here.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise _bad("bad_field", f"{what or name} must be an integer from 0 to {hi}, not "
                   f"{_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def node_id(value: Any, what: str) -> int:
    """A node id from JSON (an integer from 0 to `MAX_NODE_ID`)."""
    checked = _int({"id": value}, "id", MAX_NODE_ID, what=what, required=True)
    assert checked is not None
    return checked


def address(value: Any, what: str, *, required: bool) -> str:
    """`host:port` (or `[v6]:port`) from JSON, as given; "" for a missing optional one."""
    if value is None or value == "":
        if required:
            raise _bad("bad_field", f"{what} is missing (host:port, where the other members "
                       "reach it)")
        return ""
    if not isinstance(value, str):
        raise _bad("bad_field", f"{what} must be a string host:port, not {_json_type(value)}")
    m = _ADDRESS.fullmatch(value)
    port = int(m.group(2) or m.group(4)) if m is not None else 0
    if m is None or not 0 < port < 65536:
        raise _bad("bad_field", f"{what} {_shown(value)} is not host:port (port 1 to 65535)")
    return value


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad("bad_field", f"{name} must be true or false, not {_shown(value)}")
    return value


def _member(data: Mapping[str, Any], where: str = "") -> Member:
    """A member to add, from its fields: a learner, promoted by the leader once caught up
    unless `learner` is true."""
    member_id = node_id(data.get("id"), f"{where}id")
    return Member(member_id,
                  peer=address(data.get("peer"), f"{where}peer", required=True),
                  http=address(data.get("http"), f"{where}http", required=False),
                  voter=False, promote=not _bool(data, "learner"),
                  incarnation=_int(data, "incarnation", MAX_INT, what=f"{where}incarnation",
                                   default=0) or 0)


def parse_add(body: bytes) -> MemberChange:
    """`POST /v1/members`: one member to add."""
    data = _object(body, ADD_FIELDS)
    return MemberChange(add=(_member(data),), base=_int(data, "base", MAX_INT))


def _ids(data: Mapping[str, Any], name: str) -> tuple[int, ...]:
    value = data.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("bad_field", f"{name} must be an array of node ids, not {_json_type(value)}")
    if len(value) > MAX_IDS:
        raise _bad("bad_field", f"{name} names more than {MAX_IDS} nodes")
    ids = tuple(node_id(v, f"{name}[{i}]") for i, v in enumerate(value))
    if len(set(ids)) != len(ids):
        raise _bad("bad_field", f"{name} names a node twice")
    return ids


def parse_change(body: bytes) -> MemberChange:
    """`POST /v1/members/change`: any of add, remove and promote, as one change."""
    data = _object(body, CHANGE_FIELDS)
    raw_add = data.get("add")
    add: list[Member] = []
    if raw_add is not None:
        if not isinstance(raw_add, list):
            raise _bad("bad_field", f"add must be an array of members, not {_json_type(raw_add)}")
        if len(raw_add) > MAX_IDS:
            raise _bad("bad_field", f"add names more than {MAX_IDS} nodes")
        for i, entry in enumerate(raw_add):
            if not isinstance(entry, dict):
                raise _bad("bad_field", f"add[{i}] must be an object like "
                           '{"id": 4, "peer": "host:port"}, not ' + _json_type(entry))
            unknown = sorted(set(entry) - MEMBER_FIELDS)
            if unknown:
                raise _bad("bad_field", f"add[{i}]: unknown field {unknown[0]!r} (expected: "
                           f"{', '.join(sorted(MEMBER_FIELDS))})")
            add.append(_member(entry, f"add[{i}]."))
    change = MemberChange(tuple(add), _ids(data, "remove"), _ids(data, "promote"),
                          _int(data, "base", MAX_INT), _moves(data.get("move")))
    if not (change.add or change.remove or change.promote or change.move):
        raise _bad("bad_field", "the change changes nothing: give add, remove, promote or "
                   "move")
    named = [m.id for m in (*change.add, *change.move)] + list(change.remove) + list(
        change.promote)
    twice = sorted({i for i in named if named.count(i) > 1})
    if twice:
        raise _bad("bad_field", f"node {twice[0]} is named twice in one change")
    return change


def _moves(raw: Any) -> tuple[Member, ...]:
    """`move`: members' new addresses, `[{"id", "peer", "http"?}, ...]`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("bad_field", f"move must be an array of members, not {_json_type(raw)}")
    if len(raw) > MAX_IDS:
        raise _bad("bad_field", f"move names more than {MAX_IDS} nodes")
    moves = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise _bad("bad_field", f"move[{i}] must be an object like "
                       '{"id": 2, "peer": "host:port"}, not ' + _json_type(entry))
        unknown = sorted(set(entry) - MOVE_FIELDS)
        if unknown:
            raise _bad("bad_field", f"move[{i}]: unknown field {unknown[0]!r} (expected: "
                       f"{', '.join(sorted(MOVE_FIELDS))})")
        moves.append(Member(node_id(entry.get("id"), f"move[{i}].id"),
                            peer=address(entry.get("peer"), f"move[{i}].peer", required=True),
                            http=address(entry.get("http"), f"move[{i}].http",
                                         required=False)))
    return tuple(moves)


def parse_promote(member: int, body: bytes) -> MemberChange:
    """`POST /v1/members/{id}/promote`: `{"base"?}`, or no body."""
    data = _object(body, PROMOTE_FIELDS, empty_ok=True)
    return MemberChange(promote=(member,), base=_int(data, "base", MAX_INT))


def parse_remove(member: int, params: Mapping[str, bytes]) -> MemberChange:
    """`DELETE /v1/members/{id}?base=N`."""
    return MemberChange(remove=(member,), base=parse_base(params))


def parse_base(params: Mapping[str, bytes]) -> int | None:
    raw = params.get("base")
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise _bad("bad_param", f"base must be a configuration version (an integer from 0), "
                   f"not {text[:40]!r}")
    return int(text)


def member_path(path: str) -> tuple[int, bool] | None:
    """`/v1/members/{id}` -> (id, False), `/v1/members/{id}/promote` -> (id, True); None for
    any other path (no such route)."""
    m = _ID_PATH.fullmatch(path)
    if m is None:
        return None
    return member_id(m.group(1)), m.group(2) is not None


def member_id(text: str) -> int:
    """A node id from a path segment of digits."""
    value = int(text)
    if value > MAX_NODE_ID:
        raise _bad("bad_param", f"a node id is an integer from 0 to {MAX_NODE_ID}, not {text}")
    return value


# --- the node ------------------------------------------------------------------------


def _membership_node(node: Any) -> Any:
    if getattr(node, "membership_view", None) is None or getattr(
            node, "change_members", None) is None:
        raise ApiError(404, "no_members", "this node runs without consensus: it has no "
                       "membership to change")
    return node


def view(node: Any) -> dict[str, Any]:
    """`GET /v1/members`: the configuration as this member knows it."""
    return dict(_membership_node(node).membership_view())


def _joined_already(node: Any, change: MemberChange) -> bool:
    """The one add is a retry of a join that took: that id is a member under the same
    non-zero incarnation."""
    if len(change.add) != 1 or change.remove or change.promote or not change.add[0].incarnation:
        return False
    wanted = change.add[0]
    current = node.membership_view()
    for config in [current, *current.get("pending", ())]:
        for m in config.get("members", ()):
            if m.get("id") == wanted.id and m.get("incarnation") == wanted.incarnation:
                return True
    return False


async def change(node: Any, change: MemberChange, timeout: float) -> dict[str, Any]:
    """Ask the node for `change` (within `timeout` seconds); the answer's body, or the
    `ApiError` of its refusal or failure."""
    node = _membership_node(node)
    if _joined_already(node, change):
        return {"ok": True, **node.membership_view()}
    outcome = await node.change_members(add=change.add, remove=change.remove,
                                        promote=change.promote, move=change.move,
                                        base=change.base, timeout=timeout)
    if outcome.ok:
        return {"ok": True, **node.membership_view()}
    if outcome.code is Code.BAD_REQUEST and _joined_already(node, change):
        return {"ok": True, **node.membership_view()}  # a join answered twice, raced
    error = failure_error(outcome, True, outcome.unknown, node)
    if error.status == 503 and error.extra.get("unknown"):
        error.message = (f"{outcome.error or 'no quorum or no leader in time'} (the change "
                         "may still take effect: read the members before trying again)")
    raise error

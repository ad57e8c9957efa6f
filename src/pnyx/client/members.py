"""What both HTTP clients share for membership: the requests, the checks, and `replace`.

This module owns the bodies of the membership calls (`pnyx.api.members` reads
them), the argument checks, the catch-up test a replace waits on
(`catch_up`: the leader's view has the new member's applied slot within
`alpha` slots of its commit, the rule the leader promotes by) and the words of
each step of a replace (`ReplaceSteps`), so `Client.replace_member` and
`AsyncClient.replace_member` differ only in how they wait.

**replace OLD NEW** is three steps, none of which can leave the cluster short of
a quorum: (1) add NEW as a learner that is not promoted by itself; (2) wait
until the leader reports it caught up; (3) one change, against the version
step 1 made: promote NEW and remove OLD. If another change got in between,
step 3 is a 409 `conflict` and nothing was half-done: NEW stays a learner.
Run again with NEW a learner already (after a timeout, or a node that joined
by itself with `pnyx serve --join`), a replace resumes at step 2; if the
leader promoted NEW by itself meanwhile (a joined node is promoted once caught
up), step 3 removes OLD alone. `replace_plan` is the sequence, as a generator
of the calls to make, so both clients run the same one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Final

from pnyx.errors import BadRequest, Conflict, PnyxError

DEFAULT_ALPHA: Final = 64  # the core's ALPHA, if a view does not say
DEFAULT_REPLACE_TIMEOUT: Final = 300.0
POLL_INTERVAL: Final = 0.5


def check_id(value: Any, what: str = "node id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, not {value}")
    return value


def _check_address(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str host:port, not {type(value).__name__}")
    return value


def _check_base(base: Any) -> int | None:
    return None if base is None else check_id(base, "base")


def member_body(node_id: int, peer: str, http: str | None, learner: bool,
                incarnation: int | None) -> dict[str, Any]:
    """One member to add, as the API takes it. `incarnation` None: a fresh random one, so
    every attempt of this call is the same join and a retry is answered as added."""
    body: dict[str, Any] = {"id": check_id(node_id), "peer": _check_address(peer, "peer"),
                            "learner": bool(learner)}
    if http:
        body["http"] = _check_address(http, "http")
    body["incarnation"] = (secrets.randbits(48) + 1 if incarnation is None
                           else check_id(incarnation, "incarnation"))
    return body


def add_body(node_id: int, peer: str, http: str | None, learner: bool,
             incarnation: int | None, base: int | None) -> bytes:
    body = member_body(node_id, peer, http, learner, incarnation)
    if base is not None:
        body["base"] = _check_base(base)
    return json.dumps(body).encode()


def change_body(add: Iterable[Mapping[str, Any]], remove: Iterable[int],
                promote: Iterable[int], base: int | None,
                move: Iterable[Mapping[str, Any]] = ()) -> bytes:
    """`add`: mappings with `id`, `peer` and optionally `http`, `learner`, `incarnation`;
    `move`: mappings with `id`, `peer` and optionally `http` (a member's new addresses)."""
    members = []
    for entry in add:
        if not isinstance(entry, Mapping):
            raise TypeError("each member to add is a mapping like {'id': 4, 'peer': "
                            "'host:port'}")
        members.append(member_body(entry.get("id"), entry.get("peer"),  # type: ignore[arg-type]
                                   entry.get("http"), bool(entry.get("learner", False)),
                                   entry.get("incarnation")))
    body: dict[str, Any] = {"add": members,
                            "remove": [check_id(i) for i in remove],
                            "promote": [check_id(i) for i in promote]}
    moves = []
    for entry in move:
        if not isinstance(entry, Mapping):
            raise TypeError("each member to move is a mapping like {'id': 2, 'peer': "
                            "'host:port'}")
        moved: dict[str, Any] = {"id": check_id(entry.get("id")),  # type: ignore[arg-type]
                                 "peer": _check_address(entry.get("peer"), "peer")}  # type: ignore[arg-type]
        if entry.get("http"):
            moved["http"] = _check_address(entry["http"], "http")
        moves.append(moved)
    if moves:
        body["move"] = moves
    if base is not None:
        body["base"] = _check_base(base)
    return json.dumps(body).encode()


def base_query(base: int | None) -> str:
    return "" if base is None else f"?base={_check_base(base)}"


def as_view(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("members"), list):
        raise PnyxError("the node sent a membership view that is not an object with members")
    return data


def newest(view: Mapping[str, Any]) -> Mapping[str, Any]:
    """The newest configuration a view holds: the last of `pending` (chosen, not yet in
    force: a change made now is made against it), else the one in force."""
    pending = [p for p in view.get("pending") or () if isinstance(p, dict)]
    return pending[-1] if pending else view


def version(view: Mapping[str, Any]) -> int:
    """The version a change made now is made against (`base`): the newest's."""
    value = newest(view).get("version")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PnyxError("the node sent a membership view without a version")
    return value


def add_view(views: list[dict[str, Any]], status: int, body: Callable[[], Any]) -> None:
    """Keep an endpoint's answer in `views` if it is a view (a 200 with members)."""
    if status != 200:
        return
    try:
        views.append(as_view(body()))
    except PnyxError:
        return


def leads(view: Mapping[str, Any]) -> bool:
    """Whether `view` is a leader's: only the leader reports members' progress."""
    return any(isinstance(m, dict) and m.get("applied") is not None
               for config in (view, *(view.get("pending") or ()))
               if isinstance(config, Mapping) for m in config.get("members") or ())


def leader_elsewhere(views: list[dict[str, Any]], asked: set[str]) -> str | None:
    """The HTTP address of the leader the views name, if none of them is the leader's and
    it is not among the addresses `asked` already (None: nothing more to ask)."""
    if not views or any(leads(v) for v in views):
        return None
    for view in sorted(views, key=lambda v: -version(v)):
        leader = view.get("leader")
        member = find(view, leader) if isinstance(leader, int) else None
        if member is None:
            member = next((m for m in view.get("members") or ()
                           if isinstance(m, dict) and m.get("id") == leader), None)
        http = member.get("http") if member is not None else None
        if isinstance(http, str) and http and http not in asked:
            return http
    return None


def find(view: Mapping[str, Any], node_id: int) -> dict[str, Any] | None:
    """Member `node_id` in the newest configuration of `view` (None: not a member)."""
    for m in newest(view).get("members") or ():
        if isinstance(m, dict) and m.get("id") == node_id:
            return m
    return None


def catch_up(view: Mapping[str, Any], node_id: int) -> tuple[bool, int | None, int | None]:
    """(caught up, its applied slot, the commit) as `view` tells it. The applied slot is
    None in a follower's view (only the leader tracks progress): not an answer yet."""
    member = find(view, node_id)
    commit = view.get("commit")
    applied = member.get("applied") if member is not None else None
    if not isinstance(applied, int) or not isinstance(commit, int):
        return False, None, commit if isinstance(commit, int) else None
    alpha = view.get("alpha")
    alpha = alpha if isinstance(alpha, int) else DEFAULT_ALPHA
    return applied >= commit - alpha, applied, commit


class ReplaceSteps:
    """The words of each step of a replace, to `say` (None: silent)."""

    def __init__(self, old: int, new: int, peer: str, say: Callable[[str], None] | None,
                 ) -> None:
        self.old, self.new, self.peer = old, new, peer
        self.say = say or (lambda _: None)
        self.last: tuple[int | None, int | None] = (None, None)

    def adding(self) -> None:
        self.say(f"1/3 adding node {self.new} at {self.peer} as a learner")

    def resuming(self, view: Mapping[str, Any]) -> None:
        self.say(f"1/3 node {self.new} is a learner already (configuration version "
                 f"{version(view)}): resuming")

    def added(self, view: Mapping[str, Any]) -> None:
        member = find(view, self.new) or {}
        self.say(f"    added: configuration version {version(view)}; start node "
                 f"{self.new} now if it is not running (pnyx serve --id {self.new} --join "
                 f"ENDPOINTS --incarnation {member.get('incarnation')} --listen {self.peer} ...)")

    def waiting(self, timeout: float) -> None:
        self.say(f"2/3 waiting (up to {timeout:g} s) until the leader reports node {self.new} "
                 "caught up")

    def progress(self, applied: int | None, commit: int | None) -> None:
        if (applied, commit) != self.last and applied is not None:
            self.say(f"    node {self.new}: applied slot {applied}, leader's commit {commit}")
        self.last = (applied, commit)

    def promoted_already(self, base: int) -> None:
        self.say(f"3/3 the leader made node {self.new} a voter already: one change against "
                 f"version {base}: remove node {self.old}")

    def changing(self, base: int) -> None:
        self.say(f"3/3 one change against version {base}: promote node {self.new}, remove "
                 f"node {self.old}")

    def done(self, view: Mapping[str, Any]) -> None:
        self.say(f"    done: configuration version {version(view)}; node {self.new} "
                 f"votes, node {self.old} is removed")

    def timed_out(self, timeout: float) -> PnyxError:
        applied, commit = self.last
        where = (f"applied slot {applied}, leader's commit {commit}" if applied is not None
                 else "no endpoint answered with the leader's view of it: list the leader "
                 "among --endpoints")
        return PnyxError(
            f"node {self.new} did not catch up within {timeout:g} s ({where}); it stays a "
            f"learner and node {self.old} a member: run the same replace again to resume, or "
            f"undo with `pnyx member remove {self.new}`", code="timeout")


# What a replace asks its client to do next, and what the client sends back:
# ("members",) -> a view; ("views",) -> every endpoint's view; ("add", kwargs) and
# ("change", kwargs) -> the view after it (a refusal is thrown into the plan);
# ("sleep", seconds) -> None.
Action = tuple[Any, ...]


def replace_plan(old: int, new: int, peer: str, http: str | None, timeout: float,
                 steps: ReplaceSteps, now: Callable[[], float],
                 ) -> Generator[Action, Any, dict[str, Any]]:
    """The replace of `old` by `new` (see the module's docstring); returns the last view."""
    check_id(old, "old")
    check_id(new)
    deadline = now() + timeout
    view = yield ("members",)
    current = find(view, new)
    if current is None:
        steps.adding()
        view = yield ("add", {"node_id": new, "peer": peer, "http": http, "learner": True})
        steps.added(view)
    else:
        steps.resuming(view)
    base = version(view)  # the one change is made against this version
    steps.waiting(timeout)
    lost_once = False
    while True:
        views = yield ("views",)
        best = max((v for v in views if find(v, new) is not None),
                   key=lambda v: (catch_up(v, new)[1] is not None, version(v)), default=view)
        caught_up, applied, commit = catch_up(best, new)
        steps.progress(applied, commit)
        member = find(best, new)
        if member is not None and member.get("role") == "voter":
            # Promoted by the leader itself (it joined to be): OLD goes alone, against the
            # version that promotion made.
            base = version(best)
            steps.promoted_already(base)
            view = yield ("change", {"remove": [old], "base": base})
            steps.done(view)
            return view
        if caught_up:
            steps.changing(base)
            try:
                view = yield ("change", {"promote": [new], "remove": [old], "base": base})
            except Conflict as exc:
                # "refused": the leader's own count of its progress says not yet; wait on.
                # "conflict": another change got in first; once, look again (the leader
                # may have promoted NEW itself), then give up: someone else is changing
                # the members.
                if now() >= deadline or (exc.code == "conflict" and lost_once):
                    raise
                lost_once = lost_once or exc.code == "conflict"
                steps.say(f"    {exc.code}: {exc.message}; looking again")
            except BadRequest as exc:
                if "is a voter already" not in exc.message or now() >= deadline:
                    raise
                steps.say(f"    {exc.message}; looking again")
            else:
                steps.done(view)
                return view
        if now() >= deadline:
            raise steps.timed_out(timeout)
        yield ("sleep", POLL_INTERVAL)

"""Configuration changes as a workload of the simulated cluster (`ClusterConfig.changes`).

An operator makes `changes` membership operations, at times drawn from the
run's seed over the fault period, through the node's own request path
(`Driver.change_members_nowait`, at a random member, as `pnyx member` would
through any node's API), while the clients write and every fault of the run
strikes:

- add: a new process with a new id and an empty disk (durable standing VOTER: it
  never voted under that id) starts, and is added as a learner that the leader
  promotes once it has caught up (`Member.promote`); or as a plain learner,
  promoted by a second, explicit change;
- remove: a voter (while more than three are left) or a learner; the removed
  process keeps running and sending, and must learn that it was removed;
- replace: add a learner, then one change that promotes it and removes an old
  voter (the leader's own id included), asked again while it is refused because
  the learner has not caught up;
- two adds at once at two members, made against the same version: one takes, the
  other is refused with CONFLICT (and asks again, against the new version).

Around a change the operator may crash the leader (mid-change: the next leader
completes or abandons it) or partition the original members from the new ones.
Every operation is asked again, after a pause, until the configuration shows it
done or its attempts run out; an outcome that is unknown is looked up in the
configuration rather than trusted. Its draws come from its own RNG, so a run
without changes draws exactly what it did before changes existed.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pnyx.node.requests import DEADLINE_TICK
from pnyx.protocol.multipaxos import Outcome
from pnyx.protocol.multipaxos.messages import Member
from pnyx.protocol.multipaxos.outcome import Code
from pnyx.sim.engine import CALL, FAULT, Engine
from pnyx.sim.faults import Fault

if TYPE_CHECKING:
    from pnyx.sim.cluster import ClusterSim

MAX_VOTERS = 7
ATTEMPTS = 12  # per change, before the operator gives up on it
PROMOTE_ATTEMPTS = 40  # a promotion is refused until the learner has caught up
CHANGE_TIMEOUT = 0.5


class Operator:
    def __init__(self, sim: ClusterSim, count: int, until: float) -> None:
        self.sim = sim
        self.rng = random.Random(f"{sim.config.seed}/changes")
        self.left = count
        self.busy = 0  # changes in progress
        self.next_id = sim.config.nodes + 1
        self.until = until
        self.outcomes: Counter[str] = Counter()  # what the changes' clients heard
        self.done_ops: Counter[str] = Counter()  # operations completed, by kind
        self.given_up = 0
        for t in sorted(self.rng.uniform(0.05, until) for _ in range(count)):
            self._at(t, self._start)

    @property
    def finished(self) -> bool:
        return self.left == 0 and self.busy == 0

    # ------------------------------------------------------------ helpers

    def _at(self, t: float, callback: Callable[..., None], *args: Any) -> None:
        self.sim.push(max(t, self.sim.now), CALL, 0,
                      ("member-op", functools.partial(callback, *args)))

    def _later(self, lo: float, hi: float, callback: Callable[..., None], *args: Any) -> None:
        self._at(self.sim.now + self.rng.uniform(lo, hi), callback, *args)

    def view(self) -> Any:
        """The latest configuration, as the live replica furthest along knows it (what
        `GET /v1/members` at the leader would answer); None while every node is down."""
        best = None
        for node in self.sim.nodes.values():
            replica = node.replica if node is not None else None
            if replica is not None and (best is None or replica.commit > best.commit):
                best = replica
        return best.membership.latest if best is not None else None

    @staticmethod
    def ids(view: Any) -> set[int]:
        return {m.id for m in view.members}

    @staticmethod
    def voters(view: Any) -> list[int]:
        return [m.id for m in view.members if m.voter]

    def _member_up(self, view: Any, avoid: int | None = None) -> int | None:
        up = [i for i in sorted(self.ids(view)) if i != avoid
              and (n := self.sim.nodes.get(i)) is not None and not n.removed]
        return self.rng.choice(up) if up else None

    # --------------------------------------------------------- operations

    def _start(self) -> None:
        view = self.view()
        if self.busy or view is None:
            self._later(0.05, 0.15, self._start)  # one operation at a time
            return
        self.left -= 1
        voters = self.voters(view)
        learners = [m.id for m in view.members if not m.voter]
        roll = self.rng.random()
        if roll < 0.3 and len(voters) < MAX_VOTERS:
            self._add(promote=True)
        elif roll < 0.4 and len(voters) < MAX_VOTERS:
            self._add(promote=False, then=self._promote)
        elif roll < 0.6 and (len(voters) > 3 or learners):
            target = (self.rng.choice(learners) if learners and (
                len(voters) <= 3 or self.rng.random() < 0.3) else self.rng.choice(voters))
            self._remove(target)
        elif roll < 0.85 or len(voters) >= MAX_VOTERS - 1:
            self._add(promote=False, then=functools.partial(
                self._replace, self.rng.choice(voters)))
        else:
            base = view.version  # two adds against the same version, at two members
            self._add(promote=True, base=base)
            self._add(promote=True, base=base)

    def _add(self, promote: bool, then: Callable[[int], None] | None = None,
             base: int | None = None) -> None:
        i = self.next_id
        self.next_id += 1
        self.sim.add_node(i)
        member = Member(i, peer=f"10.0.0.{i}:7000", http=f"10.0.0.{i}:8000", voter=False,
                        promote=promote, incarnation=1)

        def done(ok: bool) -> None:
            if ok:
                self.done_ops["add"] += 1
                if then is not None:
                    self._later(0.01, 0.1, then, i)
                    return
            self.busy -= 1

        self.busy += 1
        self._change(dict(add=(member,)), lambda v: i in self.ids(v), done, ATTEMPTS, base)

    def _promote(self, i: int) -> None:
        def done(ok: bool) -> None:
            self.done_ops["promote"] += ok
            self.busy -= 1
        self._change(dict(promote=(i,)), lambda v: i in self.voters(v) or i not in self.ids(v),
                     done, PROMOTE_ATTEMPTS)

    def _replace(self, old: int, new: int) -> None:
        def done(ok: bool) -> None:
            self.done_ops["replace"] += ok
            self.busy -= 1
        view = self.view()
        if view is None:
            self._later(0.05, 0.2, self._replace, old, new)
            return
        if old not in self.voters(view):  # another operation removed it meanwhile
            others = [v for v in self.voters(view) if v != new]
            if not others:
                done(False)
                return
            old = self.rng.choice(others)
        self._change(dict(promote=(new,), remove=(old,)),
                     lambda v: new in self.voters(v) and old not in self.ids(v),
                     done, PROMOTE_ATTEMPTS)

    def _remove(self, target: int) -> None:
        def done(ok: bool) -> None:
            self.done_ops["remove"] += ok
            self.busy -= 1
        self.busy += 1
        self._change(dict(remove=(target,)), lambda v: target not in self.ids(v), done,
                     ATTEMPTS)

    # ------------------------------------------------------------ a change

    def _change(self, what: dict[str, Any], shows_done: Callable[[Any], bool],
                done: Callable[[bool], None], attempts: int, base: int | None = None) -> None:
        """Ask a random member for the change; ask again until the configuration shows
        it done, or `attempts` are spent."""
        view = self.view()
        if view is None:
            self._later(0.05, 0.2, self._change, what, shows_done, done, attempts, base)
            return
        if shows_done(view):
            done(True)
            return
        if attempts == 0:
            self.given_up += 1
            done(False)
            return
        at = self._member_up(view)
        node = self.sim.nodes.get(at) if at is not None else None
        if node is None:
            self._later(0.05, 0.2, self._change, what, shows_done, done, attempts - 1)
            return

        answered = [False]

        def heard(outcome: Outcome) -> None:
            if answered[0]:
                return
            answered[0] = True
            self.outcomes["ok" if outcome.ok else str(outcome.code) or "failed"] += 1
            if outcome.ok:
                done(True)
            else:
                self._later(0.02, 0.2, self._change, what, shows_done, done, attempts - 1)

        def crashed() -> None:
            # The node crashed with the request (a live one answers by the deadline).
            if not answered[0]:
                heard(Outcome.failed(Code.SHUTTING_DOWN, "the node crashed", unknown=True))

        node.change_members_nowait(heard, base=base, timeout=CHANGE_TIMEOUT, **what)
        self._at(self.sim.now + CHANGE_TIMEOUT + 2 * DEADLINE_TICK, crashed)
        self._maybe_strike()

    def _maybe_strike(self) -> None:
        """Right after a change was asked for: perhaps crash the leader (mid-change), or
        cut the first members off from the ones added since."""
        sim = self.sim
        now = sim.now
        if now >= self.until:
            return  # faults end at `until`, so liveness can be expected after it
        roll = self.rng.random()
        if roll < 0.25:
            leader = sim.leader()
            if leader is not None:
                Engine.crash(sim, leader)
                sim.pending_restart.append(leader)
                back = min(self.until, now + self.rng.uniform(0.005, 0.2))
                sim.push(back, FAULT, 0, Fault(back, "restart", (leader,)))
        elif roll < 0.4:
            first = set(range(1, sim.config.nodes + 1))
            new = {i for i in sim.ids if i not in first}
            side = first if self.rng.random() < 0.5 else new
            if side and len(side) < len(sim.ids):
                Engine.partition(sim, side)
                heal = min(self.until, now + self.rng.uniform(0.02, 0.3))
                sim.push(heal, FAULT, 0, Fault(heal, "heal", ()))

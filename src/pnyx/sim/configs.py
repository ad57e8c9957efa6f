"""The membership checks: which configuration governs each slot, derived from the agreed
log alone, and the rules every run with configuration changes is checked against.

The simulator derives the configurations itself, from the values first applied
in each slot (the agreed log) and the rule as the design states it — a change
chosen in slot i governs the slots from i + ALPHA on; it takes if it was made
against the latest configuration (`base`), adds only ids never seen, removes
or promotes members, and leaves a voter — sharing no code with
`pnyx.protocol.multipaxos.membership`, so a broken rule there cannot vouch for
itself. Acceptances are what the acceptors' disks hold (an `AcceptRecord` made
durable), and quorums are counted here, as majorities of the governing
configuration's voters:

- M1 in no slot do two different values each have a phase-2 quorum of the slot's
  governing configuration accepting them in one ballot (the new configuration's
  quorums and the old one's are each counted in the slots they govern: a leader
  that counted another configuration's quorums there can choose a second value);
- M2 every value a replica applies in a slot was, before that, accepted by a
  phase-2 quorum of the slot's governing configuration in one ballot: only its
  voters count, so a learner, or a replica whose removal governs the slot, never
  completes a quorum;
- M3 a promotion chosen in slot p promotes a learner that had applied slot
  p - 2 * ALPHA by then (the catch-up rule: the leader promotes a learner within
  ALPHA of its commit, and proposes at most ALPHA slots beyond it);
- M4 a replica removed from the cluster learns that it was (`Driver.removed`)
  by the end of the run;
- M5 every replica's configurations are the ones the agreed log makes by the rule
  (its latest configuration, after each change it applies or snapshot it
  installs, has the derived version, start, members and voters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pnyx.protocol.ballot import Ballot

# The rule under test, restated (a test checks it is the protocol's constant).
ALPHA = 64

M1 = "M1 no two values each win a quorum of the slot's governing configuration"
M2 = "M2 a value is applied only once a quorum of its slot's governing voters accepted it"
M3 = "M3 a learner is promoted only once it has caught up"
M4 = "M4 a removed replica learns that it was removed"
M5 = "M5 every replica's configurations are the ones the log makes by the rule"
MEMBERSHIP_RULES = (M1, M2, M3, M4, M5)


@dataclass(frozen=True, slots=True)
class Conf:
    """A configuration as the simulator derives it."""

    version: int
    start: int  # the first slot it governs
    chosen_in: int  # the slot its change was chosen in (0: the first)
    members: frozenset[int]
    voters: frozenset[int]

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1


Key = tuple[int, int]  # a ballot as (round, node)


class Configurations:
    """The configurations the agreed log makes, slot by slot, and the checks on them.

    Fed the agreed log in slot order (`chosen`), every durable acceptance
    (`accepted`) and every replica's applied progress (`progress`)."""

    def __init__(self, genesis: tuple[int, ...],
                 violate: Callable[[str, str], None], check: bool = True) -> None:
        ids = frozenset(genesis)
        # Whether M1-M3 and M5 are checked (else the configurations are only derived).
        self.check = check
        self.confs: list[Conf] = [Conf(0, 1, 0, ids, ids)]
        self.retired: set[int] = set()
        self.ever: set[int] = set(ids)  # every id ever a member
        self.upto = 0  # slots of the agreed log taken in so far
        self.violate = violate
        # slot -> (ballot, value) -> the acceptors whose disk holds that acceptance
        self.acceptances: dict[int, dict[tuple[Key, Any], set[int]]] = {}
        # slot -> the values a quorum of its governing configuration accepted
        self.won: dict[int, list[Any]] = {}
        self.max_applied: dict[int, int] = {}  # replica -> highest slot it ever applied
        self.promotions = 0  # promotions chosen (for the report and the tests)
        self.changes_taken = 0
        self.changes_refused = 0

    # ----------------------------------------------------------- lookups

    @property
    def latest(self) -> Conf:
        return self.confs[-1]

    def at(self, slot: int) -> Conf | None:
        """The configuration governing `slot`; None while the log below it is unknown."""
        if slot > self.upto + ALPHA:
            return None
        for conf in reversed(self.confs):
            if conf.start <= slot:
                return conf
        return self.confs[0]

    def as_of(self, slot: int) -> Conf:
        """The latest configuration made by the slots up to `slot`."""
        for conf in reversed(self.confs):
            if conf.chosen_in <= slot:
                return conf
        return self.confs[0]

    def removed(self, node: int) -> bool:
        """`node` was removed and governs no slot after the agreed log any more."""
        if node not in self.retired:
            return False
        last = self.at(self.upto + 1)
        return last is not None and node not in last.members \
            and node not in self.latest.members

    # ------------------------------------------------------------ events

    def progress(self, node: int, slot: int) -> None:
        if slot > self.max_applied.get(node, 0):
            self.max_applied[node] = slot

    def accepted(self, node: int, slot: int, ballot: Ballot, value: Any) -> None:
        """`node`'s disk now holds its acceptance of `value` in `slot`, `ballot`."""
        if not self.check:
            return
        votes = self.acceptances.setdefault(slot, {})
        k = ((ballot.round, ballot.node_id), value)
        voters = votes.setdefault(k, set())
        if node in voters:
            return
        voters.add(node)
        conf = self.at(slot)
        if conf is not None:
            self._count(slot, conf, value, voters)

    def _count(self, slot: int, conf: Conf, value: Any, voters: set[int]) -> None:
        if len(voters & conf.voters) < conf.quorum:
            return
        won = self.won.setdefault(slot, [])
        if value in won:
            return
        won.append(value)
        if len(won) > 1:
            self.violate(M1, f"slot {slot}: two values each accepted by a quorum of its "
                             f"configuration v{conf.version} (voters {sorted(conf.voters)})")

    def chosen(self, slot: int, value: Any) -> None:
        """Slot `slot` of the agreed log is `value` (first applied now); slots below it
        came before."""
        assert slot == self.upto + 1, (slot, self.upto)
        conf = self.at(slot)
        assert conf is not None
        if self.check and value not in self.won.get(slot, ()):
            by_ballot = {f"{k[0]}.{k[1]}": sorted(v & conf.voters) for (k, val), v
                         in self.acceptances.get(slot, {}).items() if val == value}
            self.violate(M2, f"slot {slot} applied before a quorum ({conf.quorum}) of "
                             f"configuration v{conf.version}'s voters {sorted(conf.voters)} "
                             f"accepted it in one ballot; its voters' acceptances by "
                             f"ballot: {by_ballot}")
        change = getattr(value, "change", None)
        if change is not None:
            self._change(slot, change)
        self.upto = slot
        # The slot whose configuration this slot settles: count what it holds so far.
        ahead = slot + ALPHA
        votes = self.acceptances.get(ahead)
        if votes:
            conf = self.at(ahead)
            assert conf is not None
            for (_, v), voters in votes.items():
                self._count(ahead, conf, v, voters)

    def _change(self, slot: int, change: Any) -> None:
        latest = self.latest
        why = self._invalid(latest, change)
        if why:
            self.changes_refused += 1
            return
        self.changes_taken += 1
        members = set(latest.members)
        voters = set(latest.voters)
        for i in change.remove:
            members.discard(i)
            voters.discard(i)
        for i in change.promote:
            voters.add(i)
            self.promotions += 1
            had = self.max_applied.get(i, 0)
            if self.check and had < slot - 2 * ALPHA:
                self.violate(M3, f"node {i} promoted in slot {slot} having applied only "
                                 f"up to slot {had} (needs {slot - 2 * ALPHA})")
        for m in change.add:
            members.add(m.id)
            if m.voter:
                voters.add(m.id)
        self.retired.update(change.remove)
        self.ever.update(members)
        self.confs.append(Conf(latest.version + 1, slot + ALPHA, slot, frozenset(members),
                               frozenset(voters)))

    def _invalid(self, latest: Conf, change: Any) -> str:
        if change.base != latest.version:
            return "conflict"
        adds = [m.id for m in change.add]
        if len(set(adds)) != len(adds):
            return "added twice"
        if any(i in latest.members or i in self.retired for i in adds):
            return "already a member, or retired"
        if any(i not in latest.members for i in change.remove):
            return "not a member"
        if any(i not in latest.members or i in change.remove or i in latest.voters
               for i in change.promote):
            return "not a learner"
        if not (adds or change.remove or change.promote):
            return "no change"
        after = (set(latest.voters) - set(change.remove)) | set(change.promote) | {
            m.id for m in change.add if m.voter}
        if not after:
            return "no voter left"
        return ""

    def agrees(self, node: int, applied: int, latest: Any) -> None:
        """M5: `latest`, the configuration replica `node` holds having applied up to
        slot `applied`, is the one the agreed log makes."""
        if not self.check:
            return
        want = self.as_of(applied)
        members = frozenset(m.id for m in latest.members)
        voters = frozenset(m.id for m in latest.members if m.voter)
        if (latest.version, latest.start, members, voters) != (
                want.version, want.start, want.members, want.voters):
            self.violate(M5, f"node {node} at slot {applied} holds configuration "
                             f"v{latest.version} from slot {latest.start}, voters "
                             f"{sorted(voters)}, members {sorted(members)}; the log makes "
                             f"v{want.version} from slot {want.start}, voters "
                             f"{sorted(want.voters)}, members {sorted(want.members)}")

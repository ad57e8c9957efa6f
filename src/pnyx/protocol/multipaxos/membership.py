"""Membership: which replicas vote on which slots, changed by a value chosen in the log.

The rule is Lamport's, from *Paxos Made Simple* ("the set of servers ... can be
part of the state", section 3): **the configuration chosen in slot i governs the
slots from i + ALPHA on**, and a leader proposes in slot s only once it knows
every slot up to s - ALPHA chosen (its pipelining window is at most ALPHA).
So every slot has exactly one configuration, a function of the chosen prefix
below it, and every proposer that may propose there knows it: Paxos runs per
slot as it always did, with that slot's voters as the acceptors and majorities
of them as quorums. Old and new configurations need not intersect at all;
safety needs nothing more.

Why this rule rather than one change at a time or joint quorums: it is the
paper's, it is one line (`Membership.apply`: start = slot + ALPHA), and it has no
intermediate state a crash can leave half-applied. A change in flight when the
leader crashes is a value in a slot like any other: the next leader's phase 1
finds it and completes it (proposes it again), or finds it accepted nowhere it
looks and fills the slot with a no-op (abandoned: its client hears "unknown" and
may retry). What it costs: a new leader must recover the log ALPHA slots at a
time, since it learns the configuration of later slots only as the earlier
ones are chosen (`Pipeline.recover`), and must hold phase-1 promises from a quorum
of every configuration it proposes in (`Pipeline.may_propose`). The leader fills
empty slots with no-ops after a change, so it takes effect at once rather than
after ALPHA more writes::

    slot:      ...  i-1 |  i: Change(+4 as learner)  | i+1 ... i+ALPHA-1 | i+ALPHA ...
    governed:  C1                                                        | C2 = C1 + 4
    (C1's voters accept every slot below i+ALPHA; the leader counts C2's from there)

A new member joins as a LEARNER: it is sent every Accept and the commit point,
fetches a snapshot, and catches up, but its acceptances count in no quorum.
The leader promotes it (a second change) once it has caught up: its applied
slot is within ALPHA of the leader's commit (`caught_up`), so adding a member
never leaves a quorum waiting on a replica that has the whole log to fetch.
Ids are never reused: a removed id is `retired`, so no one can come back under
an identity whose old votes someone may still count.

A member that moves to another host keeps its id (and its votes, on the disk it
takes along): a change names its new addresses (`Change.move`), and every
replica dials it there once the change is applied.

Checks, in two places. When the change is applied (`apply`: every replica, in
slot order, so all agree): made against the latest configuration (`base`), ids
to add new, ids to remove or promote present, at least one voter left. When the
leader is asked to propose it (`refusal`: the leader's view of the live
cluster): a learner promoted only once caught up; and the voters it has heard
from lately must form a quorum of the new configuration, so a change never
leaves the cluster without a live quorum (removing a live voter while others are
down, adding a voter that cannot be reached).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable

import msgspec

from pnyx.protocol.multipaxos.messages import Change, Config, Member
from pnyx.protocol.multipaxos.outcome import Code
from pnyx.protocol.quorum import QuorumSystem

ALPHA = 64  # a configuration chosen in slot i governs slots i + ALPHA ..

__all__ = ["ALPHA", "Change", "Config", "Member", "Membership", "MembershipState",
           "genesis", "quorums_of", "voters_of"]


class MembershipState(msgspec.Struct, frozen=True, array_like=True):
    """What a snapshot carries of the membership: the configurations that govern the
    slots after it (the one in force and any chosen to come), and the retired ids."""

    configs: tuple[Config, ...]
    retired: tuple[int, ...] = ()


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(MembershipState)
_config_decoder = msgspec.msgpack.Decoder(Config)


def genesis(members: Iterable[int], quorums: QuorumSystem | None = None) -> Config:
    """The first configuration: every member a voter, from slot 1."""
    ids = tuple(sorted(members))
    q1 = q2 = 0
    if quorums is not None and set(quorums.acceptors) == set(ids):
        majority = len(ids) // 2 + 1
        if (quorums.phase1, quorums.phase2) != (majority, majority):
            q1, q2 = quorums.phase1, quorums.phase2
    return Config(0, 1, tuple(Member(i) for i in ids), q1, q2)


def voters_of(config: Config) -> tuple[int, ...]:
    return tuple(m.id for m in config.members if m.voter)


def quorums_of(config: Config) -> QuorumSystem:
    voters = voters_of(config)
    if config.q1 and config.q2:
        return QuorumSystem.flexible(voters, config.q1, config.q2)
    return QuorumSystem.majority(voters)


def encode_config(config: Config) -> bytes:
    return _state_encoder.encode(config)


def decode_config(data: bytes) -> Config:
    return _config_decoder.decode(data)


class Membership:
    """The configurations a replica knows, from the chosen log (and a snapshot)."""

    def __init__(self, node_id: int, first: Config, state: bytes = b"") -> None:
        self.node_id = node_id
        self.retired: set[int] = set()
        # Invariant: sorted by start (and version), each start above the one before;
        # configs[0] governs every slot the replica may still decide or apply.
        self.configs: list[Config] = [first]
        if state:
            self.restore(state)
        self._quorums: dict[int, QuorumSystem] = {}
        self.changed = True  # the set of members changed since the driver last looked

    # ------------------------------------------------------------ lookups

    def at(self, slot: int) -> Config:
        """The configuration governing `slot` (as far as the chosen log so far says: the
        caller knows every slot up to slot - ALPHA chosen)."""
        configs = self.configs
        if len(configs) == 1 or slot < configs[1].start:
            return configs[0]
        for config in reversed(configs):
            if config.start <= slot:
                return config
        return configs[0]

    @property
    def latest(self) -> Config:
        return self.configs[-1]

    def quorums(self, config: Config) -> QuorumSystem:
        q = self._quorums.get(config.version)
        if q is None:
            q = self._quorums[config.version] = quorums_of(config)
        return q

    def governing(self, first: int, last: int) -> list[Config]:
        """The configurations that govern some slot in first..last."""
        return [c for i, c in enumerate(self.configs)
                if c.start <= last and (i + 1 == len(self.configs)
                                        or self.configs[i + 1].start > first)]

    def is_quorum(self, voters: Collection[int], first: int, last: int,
                  phase1: bool = False) -> bool:
        """Whether `voters` hold a quorum of every configuration governing first..last
        (what a leader needs to know no other leader can be choosing values there)."""
        for config in self.governing(first, last):
            q = self.quorums(config)
            if not (q.is_phase1_quorum(voters) if phase1 else q.is_phase2_quorum(voters)):
                return False
        return True

    def read_quorum_met(self, repliers: Collection[int], first: int, last: int) -> bool:
        """Whether `repliers` meet every phase-2 quorum of the configurations governing
        first..last (a quorum read's first round)."""
        for config in self.governing(first, last):
            q = self.quorums(config)
            need = len(q.acceptors) - q.phase2 + 1
            if sum(1 for v in set(repliers) if v in q.acceptors) < need:
                return False
        return True

    def members(self) -> frozenset[int]:
        """Every id in a configuration known: who is sent Accepts and heartbeats."""
        return frozenset(m.id for c in self.configs for m in c.members)

    def voters(self, first: int, last: int) -> frozenset[int]:
        return frozenset(v for c in self.governing(first, last) for v in voters_of(c))

    def is_voter(self, node_id: int, slot: int) -> bool:
        return node_id in voters_of(self.at(slot))

    def member(self, node_id: int) -> Member | None:
        for m in self.latest.members:
            if m.id == node_id:
                return m
        return None

    def removed(self, node_id: int, commit: int) -> bool:
        """Whether `node_id` is in no configuration governing slots after `commit`: it
        decides nothing any more (every slot it voted on is chosen)."""
        return all(node_id not in {m.id for m in c.members}
                   for c in self.governing(commit + 1, commit + ALPHA + 1)
                   ) and node_id not in {m.id for m in self.latest.members}

    # ------------------------------------------------------------ changes

    def apply(self, slot: int, change: Change) -> tuple[Code, str]:
        """Apply the change chosen in `slot` (in slot order, on every replica alike):
        the new configuration governs from slot + ALPHA. (Code.NONE, "") if it took."""
        latest = self.latest
        why = self.invalid(change)
        if why:
            code = Code.CONFLICT if change.base != latest.version else Code.BAD_REQUEST
            return code, why
        self.configs.append(self.changed_config(latest, change, slot + ALPHA))
        self.retired.update(change.remove)
        self.changed = True
        return Code.NONE, ""

    def invalid(self, change: Change) -> str:
        """Why `change` cannot be applied to the latest configuration ("" if it can)."""
        latest = self.latest
        if change.base != latest.version:
            return (f"the configuration changed: it is version {latest.version}, the change "
                    f"was made against {change.base}; read it again and retry")
        ids = {m.id for m in latest.members}
        voters = set(voters_of(latest))
        for m in change.add:
            if m.id in ids:
                return f"node {m.id} is already a member"
            if m.id in self.retired:
                return f"node {m.id} was a member before: ids are never reused, pick a new one"
        if len({m.id for m in change.add}) != len(change.add):
            return "a node is added twice"
        for i in change.remove:
            if i not in ids:
                return f"node {i} is not a member"
        for i in change.promote:
            if i not in ids or i in change.remove:
                return f"node {i} is not a member"
            if i in voters:
                return f"node {i} is a voter already"
        for m in change.move:
            if m.id not in ids or m.id in change.remove:
                return f"node {m.id} is not a member"
            if not m.peer:
                return f"node {m.id} moves to no address"
        if len({m.id for m in change.move}) != len(change.move):
            return "a node is moved twice"
        if not (change.add or change.remove or change.promote or change.move):
            return "the change changes nothing"
        after = (voters - set(change.remove)) | set(change.promote) | {
            m.id for m in change.add if m.voter}
        if not after:
            return "the change would leave no voter"
        return ""

    @staticmethod
    def changed_config(config: Config, change: Change, start: int) -> Config:
        removed = set(change.remove)
        promoted = set(change.promote)
        moved = {m.id: m for m in change.move}
        members = [m if m.id not in promoted else msgspec.structs.replace(
                       m, voter=True, promote=False)
                   for m in config.members if m.id not in removed]
        members = [m if m.id not in moved else msgspec.structs.replace(
                       m, peer=moved[m.id].peer, http=moved[m.id].http)
                   for m in members]
        members.extend(change.add)
        members.sort(key=lambda m: m.id)
        return Config(config.version + 1, start, tuple(members))

    def trim(self, commit: int) -> None:
        """Forget the configurations that govern no slot after `commit` any more."""
        configs = self.configs
        while len(configs) > 1 and configs[1].start <= commit + 1:
            del configs[0]
            self.changed = True

    # ------------------------------------------------------- snapshot state

    def encode(self) -> bytes:
        return _state_encoder.encode(MembershipState(tuple(self.configs),
                                                     tuple(sorted(self.retired))))

    def restore(self, data: bytes) -> None:
        """Take the state a snapshot carried (`encode`), replacing what is known."""
        state = _state_decoder.decode(data)
        if not state.configs:
            raise ValueError("a membership state without a configuration")
        self.configs = list(state.configs)
        self.retired = set(state.retired)
        self._quorums = {}
        self.changed = True

    def check_invariants(self) -> None:
        configs = self.configs
        assert configs, "no configuration"
        for a, b in itertools.pairwise(configs):
            assert a.start < b.start and a.version < b.version, (a, b)
        for c in configs:
            assert voters_of(c), c

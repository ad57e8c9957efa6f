"""The acceptor of every slot at once: one promise for the whole log, one accepted
entry per slot.

It applies the seed's two rules from `pnyx.protocol.synod.acceptor`
(`may_promise`: "check one", promise only a ballot higher than any promised;
`may_accept`: accept unless a higher ballot was promised) to every slot, with
one `promised` ballot covering them all. Each change of state is saved
through the outbox before the `Promise`/`Accepted` that reports it, which is
emitted (held until durable). It votes only in the standing of a voter
(`pnyx.protocol.multipaxos.standing`). What it accepted in slots a durable
snapshot holds is forgotten (`forget`, decided by `Log.compact`), and every
`Promise` says so (`compacted`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pnyx.protocol.ballot import Ballot, sight
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.messages import (
    Accept,
    Accepted,
    Entry,
    Prepare,
    Promise,
    Rejected,
    entry_size,
    in_parts,
)
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    PromiseRecord,
    ReplicaDurable,
    RoundRecord,
)
from pnyx.protocol.synod.acceptor import may_accept, may_promise

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.standing import Standings


class Acceptor:
    standings: Standings

    def __init__(self, node_id: int, config: ReplicaConfig, out: Outbox,
                 durable: ReplicaDurable) -> None:
        self.node_id = node_id
        self.config = config
        self.out = out
        # Invariant: >= the ballot of every entry in `accepted`; never decreases.
        self.promised = max([durable.promised, *(e.ballot for e in durable.accepted.values())])
        # slot -> the proposal accepted last in it. Invariant: every entry's record was
        # saved before any Accepted reporting it was emitted.
        self.accepted: dict[int, Entry] = dict(durable.accepted)
        # Slots 1..compacted: what was accepted there is forgotten (they are chosen, and
        # in a durable snapshot). Invariant: no entry in `accepted` is at or below it.
        self.compacted = durable.compacted
        # Invariant: the highest slot ever accepted here: in `accepted` or compacted.
        self.max_accepted = max(self.accepted, default=self.compacted)
        # The highest ballot round this replica ever used as proposer; saved before use.
        self.last_round = durable.last_round
        # Invariant: >= `promised`: the highest ballot seen in any message (or the floor
        # a refused one lifted us to).
        self.highest_seen = self.promised
        self.refused = 0  # peers' ballots refused as out of reach (`ballot.sight`)

    def observe(self, ballot: Ballot) -> bool:
        """A peer's ballot: whether it is within reach, so its message may be acted on.
        The check of `pnyx.protocol.ballot.sight`: every ballot a peer makes us promise,
        accept, follow or step down for passes here first."""
        self.highest_seen, admitted = sight(self.highest_seen, self.last_round, ballot)
        if not admitted:
            self.refused += 1
        return admitted

    def next_ballot(self) -> Ballot:
        """A ballot of ours above every one seen, promised or used by us before."""
        floor = max(self.highest_seen, self.promised, Ballot(self.last_round, self.node_id))
        return floor.successor(self.node_id)

    def use_round(self, round: int) -> None:
        """We propose in ballot round `round`: saved first, so it is never used twice."""
        self.last_round = round
        self.out.save(RoundRecord(round))

    def on_prepare(self, m: Prepare) -> bool:
        """Phase 1b: promise and report every entry accepted in the prepared range
        (in parts that each fit a message), or refuse. Whether it promised."""
        out = self.out
        if not self.standings.votes:
            return False  # see `pnyx.protocol.multipaxos.standing`: not a voter
        # The ballot it already holds is promised again: a leader asks a voter of a
        # configuration it had no quorum of for its promise, and that voter may have
        # accepted the leader's Accepts in this very ballot meanwhile (as a learner).
        if not may_promise(self.promised, m.ballot) and m.ballot != self.promised:
            out.emit(m.src, Rejected(self.node_id, m.ballot, self.promised))
            return False
        if m.ballot != self.promised:
            self.promised = m.ballot
            out.save(PromiseRecord(m.ballot))
        known = set(m.known)
        # Walk the prepared range, not the whole log (which only grows): an election
        # costs what is in flight, not what was ever accepted.
        accepted = self.accepted
        entries = tuple(
            e for s in range(max(m.first, self.compacted + 1), self.max_accepted + 1)
            if (e := accepted.get(s)) is not None and s not in known
        )
        # In parts that each fit in a message: an acceptor may hold more accepted entries
        # than a transport frame carries.
        parts = in_parts(entries, entry_size, self.config.promise_bytes)
        for i, part in enumerate(parts):
            out.emit(m.src, Promise(self.node_id, m.ballot, part, i, len(parts),
                                    self.compacted))
        return True

    def on_accept(self, m: Accept) -> bool:
        """Phase 2b: accept (saving the entry if it is new) or refuse. Whether it accepted."""
        if not self.standings.votes:
            return False
        if not may_accept(self.promised, m.ballot):
            self.out.emit(m.src, Rejected(self.node_id, m.ballot, self.promised))
            return False
        slot = m.slot
        if slot <= self.compacted:
            # Chosen, and forgotten here: the value is the chosen one (see `Log.compact`).
            # Acknowledged, not recorded; a promise it raises is recorded first.
            if m.ballot > self.promised:
                self.promised = m.ballot
                self.out.save(PromiseRecord(m.ballot))
            self.out.emit(m.src, Accepted(self.node_id, m.ballot, slot))
            return True
        self.promised = m.ballot
        entry = Entry(slot, m.ballot, m.value)
        if self.accepted.get(slot) != entry:
            self.accepted[slot] = entry
            if slot > self.max_accepted:
                self.max_accepted = slot
            self.out.save(AcceptRecord(entry))
        self.out.emit(m.src, Accepted(self.node_id, m.ballot, slot))
        return True

    def forget(self, upto: int) -> None:
        """Forget what was accepted in slots 1..upto (`Log.compact` decides when)."""
        if upto <= self.compacted:
            return
        accepted = self.accepted
        if len(accepted) > upto - self.compacted:
            for slot in range(self.compacted + 1, upto + 1):
                accepted.pop(slot, None)
        else:
            for slot in [s for s in accepted if s <= upto]:
                del accepted[slot]
        self.compacted = upto
        if self.max_accepted < upto:
            self.max_accepted = upto

    def accepted_in(self, first: int, last: int) -> dict[int, Entry]:
        """Read-only, for observers: the entries accepted in slots first..last (a walk of
        that range only)."""
        accepted = self.accepted
        return {s: e for s in range(max(1, first), last + 1)
                if (e := accepted.get(s)) is not None}

    def check_invariants(self) -> None:
        top = self.max_accepted
        assert top == self.compacted or top in self.accepted, top
        assert top >= self.compacted, (top, self.compacted)
        assert self.highest_seen >= self.promised, (self.highest_seen, self.promised)
        # The newest entries only, cheap enough for every event (the rest hold by
        # construction: an entry takes the ballot then promised, which never decreases).
        for slot in range(max(1, top - 7), top + 1):
            entry = self.accepted.get(slot)
            if entry is not None:
                assert entry.slot == slot, (slot, entry)
                assert entry.ballot <= self.promised, (slot, entry.ballot, self.promised)


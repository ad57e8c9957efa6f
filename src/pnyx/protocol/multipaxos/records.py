"""The durable records of a Multi-Paxos replica, and the state they rebuild.

A replica asks for records to be made durable (`LogReady.persist`); a storage
engine writes them in order, and after a crash `ReplicaDurable` is what those
records add up to. `ReplicaDurable.apply` is the one definition of that
meaning, used by the simulator's disk and by real storage alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.multipaxos.messages import Batch, Entry


class _Record(msgspec.Struct, frozen=True, array_like=True, tag_field="r"):
    pass


class PromiseRecord(_Record, tag="promise"):
    """The acceptor promised `ballot` for every slot."""

    ballot: Ballot


class RoundRecord(_Record, tag="round"):
    """This replica used ballot round `round`; it must never use it again."""

    round: int


class AcceptRecord(_Record, tag="accept"):
    """The acceptor accepted `entry`."""

    entry: Entry


class ChosenRecord(_Record, tag="chosen"):
    """`value` is chosen in `slot`.

    `accepted` says `value` is also the value of this replica's own accepted entry
    for `slot`, recorded before: a store may then keep a reference to that entry
    instead of a second copy of the value. The replica says so only once it has
    promised the ballot `value` was chosen in, and so the reference stays good:
    every proposal for the slot in that ballot or a higher one carries the same
    value, so whatever later replaces the accepted entry holds it too.
    """

    slot: int
    value: Batch
    accepted: bool = False


class CompactRecord(_Record, tag="compact"):
    """Slots 1..`upto` are in a durable snapshot: their accepted entries and chosen
    values are forgotten. The replica asks for it only once a snapshot at a slot
    >= `upto` is durable (see `pnyx.protocol.multipaxos.log.Log.compact`)."""

    upto: int


class Standing(enum.IntEnum):
    """Whether this replica may vote (promise and accept), as its disk says.

    A replica that lost its disk has lost its promises: were it to vote again
    under the same identity, a quorum counting its new votes could miss what
    it promised or accepted before (see `pnyx.protocol.multipaxos.standing`).
    """

    VOTER = 0  # votes; every store made before standings existed is one
    NEW = 1  # an empty store: asks every other member whether it is empty too
    LEARNER = 2  # started empty in a cluster with history: learns, never votes
    READY = 3  # every other member was empty: votes once every member is READY too


class StandingRecord(_Record, tag="standing"):
    """This replica's standing changed: NEW -> READY -> VOTER, or NEW -> LEARNER."""

    standing: Standing


LogRecord = (PromiseRecord | RoundRecord | AcceptRecord | ChosenRecord | CompactRecord
             | StandingRecord)


@dataclass(slots=True)
class ReplicaDurable:
    """What a replica's durable records add up to."""

    promised: Ballot = ZERO
    last_round: int = 0
    accepted: dict[int, Entry] = field(default_factory=dict)
    chosen: dict[int, Batch] = field(default_factory=dict)
    # Slots 1..compacted are in a durable snapshot: no accepted or chosen entry is kept.
    compacted: int = 0
    standing: Standing = Standing.VOTER

    def apply(self, record: LogRecord) -> None:
        if isinstance(record, PromiseRecord):
            self.promised = max(self.promised, record.ballot)
        elif isinstance(record, RoundRecord):
            self.last_round = max(self.last_round, record.round)
        elif isinstance(record, AcceptRecord):
            self.accepted[record.entry.slot] = record.entry
            self.promised = max(self.promised, record.entry.ballot)
        elif isinstance(record, ChosenRecord):
            if record.slot > self.compacted:
                self.chosen[record.slot] = record.value
        elif isinstance(record, CompactRecord):
            self.compact(record.upto)
        else:
            self.standing = record.standing

    def compact(self, upto: int) -> None:
        """Forget every accepted and chosen entry in slots 1..`upto`."""
        if upto <= self.compacted:
            return
        self.compacted = upto
        for table in (self.accepted, self.chosen):
            for slot in [s for s in table if s <= upto]:
                del table[slot]

    def copy(self) -> ReplicaDurable:
        return ReplicaDurable(
            self.promised, self.last_round, dict(self.accepted), dict(self.chosen),
            self.compacted, self.standing,
        )

"""The durable records of a Multi-Paxos replica, and the state they rebuild.

A replica asks for records to be made durable (`LogReady.persist`); a storage
engine writes them in order, and after a crash `ReplicaDurable` is what those
records add up to. `ReplicaDurable.apply` is the one definition of that
meaning, used by the simulator's disk and by real storage alike.
"""

from __future__ import annotations

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


LogRecord = PromiseRecord | RoundRecord | AcceptRecord | ChosenRecord


@dataclass(slots=True)
class ReplicaDurable:
    """What a replica's durable records add up to."""

    promised: Ballot = ZERO
    last_round: int = 0
    accepted: dict[int, Entry] = field(default_factory=dict)
    chosen: dict[int, Batch] = field(default_factory=dict)

    def apply(self, record: LogRecord) -> None:
        if isinstance(record, PromiseRecord):
            self.promised = max(self.promised, record.ballot)
        elif isinstance(record, RoundRecord):
            self.last_round = max(self.last_round, record.round)
        elif isinstance(record, AcceptRecord):
            self.accepted[record.entry.slot] = record.entry
            self.promised = max(self.promised, record.entry.ballot)
        else:
            self.chosen[record.slot] = record.value

    def copy(self) -> ReplicaDurable:
        return ReplicaDurable(
            self.promised, self.last_round, dict(self.accepted), dict(self.chosen)
        )

"""The messages of Multi-Paxos: one instance of Paxos per log slot.

The seed's four messages keep their names and meaning, now per slot: a new
leader's single `Prepare` covers every slot from `first` on, except those it
already knows are chosen (`known`) — the seed's "phase 1 of instances 135–137
and of all instances greater than 139". Each `Promise` returns every accepted
entry in that range. `Accept` and `Accepted` carry a slot. Alongside them:
leadership (`Heartbeat`, `PreVote`), learning and catch-up (`commit` carried
on `Accept` and `Heartbeat`; `CatchUp` / `Chosen`), client commands sent to
any member (`Forward`, `Aborted`) and reads (`ReadIndex`, `QuorumRead`).

A slot's value is a `Batch` of client commands; an empty batch is the no-op
a new leader puts in a slot nobody accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import msgspec

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.codec import MalformedMessage as MalformedMessage  # re-exported
from pnyx.protocol.codec import NodeId, decode_with

Slot = Annotated[int, msgspec.Meta(ge=1)]
Index = Annotated[int, msgspec.Meta(ge=0)]  # a slot number, or 0 for "none yet"


# The log keeps every command, batch and entry it ever chose (until snapshots): millions
# of objects. None of them can be part of a reference cycle (their fields are numbers,
# bytes and each other), so they stay out of the cyclic garbage collector's sight
# (`gc=False`), which would otherwise walk them all in every full collection.


class Command(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A client command, named by the member that received it (`origin`) and its `id` there."""

    origin: NodeId
    id: Index
    payload: bytes


class Member(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A member of a configuration (`pnyx.protocol.multipaxos.membership`): its id, where
    its peers and its clients reach it, whether it votes, and for a learner whether the
    leader promotes it once it has caught up. `incarnation` names the process that asked
    to join (0: a member of the first configuration): a node that lost its disk and asks
    again under the same id is told apart from a retry of the same request."""

    id: NodeId
    peer: str = ""
    http: str = ""
    voter: bool = True
    promote: bool = False
    incarnation: Index = 0


class Config(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The members that vote on slots `start`.. (until the next configuration's start).
    `q1`/`q2`: phase-1 and phase-2 quorum sizes among the voters (0: a majority)."""

    version: Index
    start: Slot
    members: tuple[Member, ...]
    q1: Index = 0
    q2: Index = 0


class Change(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A membership change, proposed as a slot's value like a command: made against
    configuration `base` (else refused as a conflict), by request `id` at `origin`."""

    origin: NodeId
    id: Index
    base: Index
    add: tuple[Member, ...] = ()
    remove: tuple[NodeId, ...] = ()
    promote: tuple[NodeId, ...] = ()
    # Members that moved: their new `peer` and `http` addresses (the rest of each
    # `Member` is ignored; its role is unchanged).
    move: tuple[Member, ...] = ()


class Batch(msgspec.Struct, frozen=True, array_like=True, gc=False, omit_defaults=True):
    """The value of one slot: commands applied in order, or one membership change.
    Empty means no-op."""

    commands: tuple[Command, ...] = ()
    change: Change | None = None


NOOP = Batch()


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A proposal accepted for a slot."""

    slot: Slot
    ballot: Ballot
    value: Batch


class Decided(msgspec.Struct, frozen=True, array_like=True):
    """A slot known to be chosen, with its value (sent to a replica catching up)."""

    slot: Slot
    value: Batch


class _Msg(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    src: NodeId


class Prepare(_Msg, tag="prepare"):
    """Phase 1a for every slot >= `first` except the `known` chosen ones."""

    ballot: Ballot
    first: Slot
    known: tuple[Slot, ...] = ()


class Promise(_Msg, tag="promise"):
    """Phase 1b: the promise, with every entry accepted in the prepared range.

    Many entries do not fit in one message: they come in `parts` messages, this
    one being number `part` (from 0), and the promise counts only once all are in.
    """

    ballot: Ballot
    entries: tuple[Entry, ...]
    part: Index = 0
    parts: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Slots 1..compacted are chosen and in this acceptor's snapshot: it no longer keeps
    # what it accepted there, so `entries` cannot report them. A candidate whose phase 1
    # starts at or below it must learn them (catch up) before it may lead.
    compacted: Index = 0


class Accept(_Msg, tag="accept"):
    """Phase 2a for one slot; `commit` says every slot up to it is chosen."""

    ballot: Ballot
    slot: Slot
    value: Batch
    commit: Index


class Accepted(_Msg, tag="accepted"):
    """Phase 2b for one slot."""

    ballot: Ballot
    slot: Slot


class Rejected(_Msg, tag="rejected"):
    """A Prepare, Accept or Heartbeat refused because of the higher `promised`."""

    ballot: Ballot
    promised: Ballot


class Heartbeat(_Msg, tag="heartbeat"):
    """The leader is alive; `commit` as on Accept; `round` is echoed by the ack."""

    ballot: Ballot
    commit: Index
    round: Index


class HeartbeatAck(_Msg, tag="heartbeat-ack"):
    ballot: Ballot
    round: Index
    accepted: Index = 0  # the highest slot the acker has accepted anything in
    applied: Index = 0  # the highest slot it has applied (a learner's catch-up progress)
    # The acker keeps the lease guard (`ReplicaConfig.read_lease`): it promises no other
    # ballot for an election timeout after it last heard the leader.
    lease: bool = False


class PreVote(_Msg, tag="prevote"):
    """Before phase 1: "do you also miss the leader?" (Raft's pre-vote)."""

    ballot: Ballot


class PreVoteReply(_Msg, tag="prevote-reply"):
    ballot: Ballot
    granted: bool
    # Refused because the replier still hears a leader: that leader (0: none, or granted).
    # The asker is then cut off from a leader others see (the bridge). Trailing with a
    # default: a reply without it still decodes.
    leader: int = 0


class CatchUp(_Msg, tag="catch-up"):
    """Send me the chosen values of the slots from `first` on."""

    first: Slot


class Chosen(_Msg, tag="chosen"):
    """Chosen values, in slot order, for a replica that is catching up."""

    entries: tuple[Decided, ...]
    commit: Index


class SnapshotOffer(_Msg, tag="snapshot-offer"):
    """The slots asked for are compacted here: fetch snapshot `slot` (`index` commands
    applied, `size` bytes), then catch up from the slot after it."""

    slot: Slot
    index: Index
    size: Index


class SnapshotRequest(_Msg, tag="snapshot-request"):
    """Send me the bytes of snapshot `slot` from `offset` on."""

    slot: Slot
    offset: Index


class SnapshotChunk(_Msg, tag="snapshot-chunk"):
    """Bytes offset..offset+len(data) of snapshot `slot`'s file of `total` bytes; `crc`
    is the CRC-32 of `data` (a chunk that fails it is dropped and asked for again)."""

    slot: Slot
    offset: Index
    total: Index
    data: bytes
    crc: Index


class Probe(_Msg, tag="probe"):
    """From a replica that started with an empty disk: is yours empty too?"""


class ProbeReply(_Msg, tag="probe-reply"):
    """`empty`: this replica never used a round, promised, accepted or learned anything;
    `ready`: it found every other member empty (READY) or votes already (VOTER);
    `voter`: it votes already (so every member had decided when it began to)."""

    empty: bool
    ready: bool = False
    voter: bool = False


class Forward(_Msg, tag="forward"):
    """Client commands a member received, handed to the leader."""

    commands: tuple[Command, ...]


class Aborted(_Msg, tag="aborted"):
    """To a command's origin: its leader lost the ballot before the command was chosen."""

    ids: tuple[Index, ...]


class ReadIndex(_Msg, tag="read-index"):
    """A follower asks the leader for a point in the log at which a read is linearizable.
    `promised`: the asker's promise when it asked, if it votes (else ZERO). Equal to
    the leader's ballot, it says what an ack of a heartbeat round sent after the reads
    arrived would say: the asker had promised no higher ballot."""

    id: Index
    promised: Ballot = ZERO


class ReadIndexReply(_Msg, tag="read-index-reply"):
    id: Index
    index: Index
    ok: bool


class QuorumRead(_Msg, tag="quorum-read"):
    """Paxos quorum read: answer once you have applied `min_applied`."""

    id: Index
    query: bytes
    min_applied: Index


class QuorumReadReply(_Msg, tag="quorum-read-reply"):
    id: Index
    applied: Index
    accepted: Index  # the highest slot this acceptor has accepted anything in
    result: bytes
    index: Index  # commands applied: the log index the result reflects


class ChangeMembers(_Msg, tag="change-members"):
    """A membership change a member received, handed to the leader (as `Forward`)."""

    change: Change


class ChangeRefused(_Msg, tag="change-refused"):
    """To a change's origin: the leader refused to propose it (`code`, `error`: why)."""

    id: Index
    code: str
    error: str


class Removed(_Msg, tag="removed"):
    """To a replica no configuration from `version` on holds: it was removed."""

    version: Index


LogMessage = (
    Prepare | Promise | Accept | Accepted | Rejected | Heartbeat | HeartbeatAck | PreVote
    | PreVoteReply | CatchUp | Chosen | Forward | Aborted | ReadIndex | ReadIndexReply
    | QuorumRead | QuorumReadReply | SnapshotOffer | SnapshotRequest | SnapshotChunk | Probe
    | ProbeReply | ChangeMembers | ChangeRefused | Removed
)
LOG_MESSAGE_TYPES: tuple[type, ...] = (
    Prepare, Promise, Accept, Accepted, Rejected, Heartbeat, HeartbeatAck, PreVote,
    PreVoteReply, CatchUp, Chosen, Forward, Aborted, ReadIndex, ReadIndexReply, QuorumRead,
    QuorumReadReply, SnapshotOffer, SnapshotRequest, SnapshotChunk, Probe, ProbeReply,
    ChangeMembers, ChangeRefused, Removed,
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LogMessage)


def encode(message: LogMessage) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> LogMessage:
    """Decode one message; anything else raises `MalformedMessage` with the reason."""
    return decode_with(_decoder, data)


# ------------------------------------------------ sizes, for budgets of bytes

_T = TypeVar("_T")


def size_of(value: Batch) -> int:
    """Roughly the bytes `value` takes in a message: what budgets of bytes count."""
    return sum(len(c.payload) + 32 for c in value.commands) + 16


def entry_size(entry: Entry) -> int:
    return size_of(entry.value)


def payload_size(command: Command) -> int:
    return len(command.payload)


def in_parts(items: tuple[_T, ...], size: Callable[[_T], int],
             budget: int) -> list[tuple[_T, ...]]:
    """`items` in order, cut into parts of at most `budget` bytes by `size` (a part
    holds at least one item; there is at least one part, empty if `items` is)."""
    parts: list[tuple[_T, ...]] = []
    start, total = 0, 0
    for i, item in enumerate(items):
        n = size(item)
        if i > start and total + n > budget:
            parts.append(items[start:i])
            start, total = i, 0
        total += n
    parts.append(items[start:])
    return parts

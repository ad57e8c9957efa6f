"""A Multi-Paxos replica: the facade a driver feeds with events.

This is the seed's "Multi-Paxos" section. Every replica is an acceptor for
every slot, a learner of the log and, when elected, the distinguished
proposer (the leader). It is pure: it is fed events (`submit`, `read`,
`step`, `tick`, `persisted`) and returns a `LogReady` of effects, holding back
every message that reports acceptor state until the records behind it are
durable. The work is done by units that each own their state (see the
package's docstring for the diagrams):

- `acceptor.Acceptor`: the promise and the accepted entry of every slot;
- `election.Election`: pre-vote, phase 1, becoming leader, heartbeats,
  stepping down, following;
- `pipeline.Pipeline`: commands routed to the leader, its queue, batches,
  the window of slots in flight and their votes;
- `log.Log`: the chosen log, commit, applying in order, catch-up;
- `reads.Reads`: read index and quorum reads;
- `transfer.Transfer`: snapshots fetched from and sent to peers;
- `standing.Standings`: whether this replica votes (an empty disk asks first);
- `membership.Membership`: which members vote on which slots, changed through
  the log (Lamport's rule: a change chosen in slot i governs from i + ALPHA);
- `effects.Outbox`: the effects they produce, persist-before-send.

The facade routes each message to the unit it concerns (`step`), passes the
clock (`now`) explicitly, and turns the outbox into a `LogReady`. A variant
replica (the mutation guards of `pnyx.sim.mutants`) swaps in a unit class:
`acceptor_class`, `election_class`, `pipeline_class`, `log_class`,
`reads_class`, `transfer_class`, `membership_class`.
"""

from __future__ import annotations

import random

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.codec import MalformedMessage
from pnyx.protocol.multipaxos.acceptor import Acceptor
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import LogReady, Outbox
from pnyx.protocol.multipaxos.election import Election, Role
from pnyx.protocol.multipaxos.log import Log, Machine, SnapshotBase
from pnyx.protocol.multipaxos.membership import Config, Member, Membership, genesis
from pnyx.protocol.multipaxos.messages import (
    LOG_MESSAGE_TYPES,
    Aborted,
    Accept,
    Accepted,
    Batch,
    CatchUp,
    Change,
    ChangeMembers,
    ChangeRefused,
    Chosen,
    Entry,
    Forward,
    Heartbeat,
    HeartbeatAck,
    LogMessage,
    Prepare,
    PreVote,
    PreVoteReply,
    Probe,
    ProbeReply,
    Promise,
    QuorumRead,
    QuorumReadReply,
    ReadIndex,
    ReadIndexReply,
    Rejected,
    Removed,
    SnapshotChunk,
    SnapshotOffer,
    SnapshotRequest,
    decode,
)
from pnyx.protocol.multipaxos.outcome import ReadMode
from pnyx.protocol.multipaxos.pipeline import Pipeline
from pnyx.protocol.multipaxos.reads import Reads
from pnyx.protocol.multipaxos.records import ReplicaDurable, Standing
from pnyx.protocol.multipaxos.standing import Standings
from pnyx.protocol.multipaxos.transfer import Transfer
from pnyx.protocol.quorum import QuorumSystem

__all__ = ["LogReady", "Machine", "Replica", "ReplicaConfig", "Role", "SnapshotBase"]


class Replica:
    acceptor_class: type[Acceptor] = Acceptor
    election_class: type[Election] = Election
    pipeline_class: type[Pipeline] = Pipeline
    log_class: type[Log] = Log
    reads_class: type[Reads] = Reads
    transfer_class: type[Transfer] = Transfer
    membership_class: type[Membership] = Membership

    def __init__(
        self,
        node_id: int,
        config: ReplicaConfig,
        rng: random.Random,
        machine: Machine,
        durable: ReplicaDurable | None = None,
        now: float = 0.0,
        snapshot: SnapshotBase | None = None,
    ) -> None:
        """`snapshot`: the durable snapshot `machine` was restored from, if any (its
        slot must be at or above the compacted floor of `durable`).

        `config.members` are the members of the cluster's first configuration. A
        replica outside it joined later (`pnyx serve --join`): it learns the
        configurations from the log or a snapshot, as every member does."""
        d = durable if durable is not None else ReplicaDurable()
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.machine = machine
        self.dropped = 0  # malformed or foreign messages, counted and ignored
        self.membership = membership = self.membership_class(
            node_id, genesis(config.members, config.quorums),
            getattr(snapshot, "membership", b"") if snapshot is not None else b"")
        self.removed = False  # told, or saw in the log, that it is a member no more
        self._removed_told: dict[int, float] = {}
        self.out = out = Outbox(node_id, config.members)
        self.acceptor = acceptor = self.acceptor_class(node_id, config, out, d)
        self.log = log = self.log_class(node_id, config, rng, machine, out, d.chosen,
                                        d.compacted, snapshot, membership)
        self.election = election = self.election_class(node_id, config, rng, out, now)
        self.pipeline = pipeline = self.pipeline_class(node_id, config, out)
        self.reads = reads = self.reads_class(node_id, config, machine, out)
        self.transfer = transfer = self.transfer_class(node_id, config, out)
        self.standings = standings = Standings(node_id, config, out, d.standing)
        election.acceptor, election.log, election.pipeline, election.reads = (
            acceptor, log, pipeline, reads)
        election.standings = acceptor.standings = reads.standings = standings
        log.acceptor, log.election, log.pipeline, log.reads = acceptor, election, pipeline, reads
        log.transfer = transfer
        pipeline.election, pipeline.log = election, log
        reads.acceptor, reads.election, reads.log = acceptor, election, log
        transfer.log = log
        standings.acceptor, standings.log = acceptor, log
        self._members: frozenset[int] = frozenset()
        self._members_changed()
        log.apply_chosen()
        self._members_changed()
        out.ready.outcomes.clear()
        out.ready.snapshots.clear()  # replaying the tail takes no snapshot before start
        log.taking = 0

    # =========================================================== events in

    def submit(self, request_id: int, payload: bytes, now: float) -> LogReady:
        """A client's command reached this member. Its outcome comes back under
        `request_id`, which must not be reused while it is pending."""
        return self.submit_many([(request_id, payload)], now)

    def submit_many(self, requests: list[tuple[int, bytes]], now: float) -> LogReady:
        """Several commands at once: they are routed together, so they can share a
        slot (a driver that gathers what arrives in one loop iteration batches
        even while the pipelining window has room)."""
        self.pipeline.submit_many(requests, now)
        return self._flush()

    def change_members(self, request_id: int, base: int, *, add: tuple[Member, ...] = (),
                       remove: tuple[int, ...] = (), promote: tuple[int, ...] = (),
                       move: tuple[Member, ...] = (), now: float) -> LogReady:
        """A client's membership change, made against configuration version `base`: it
        is chosen in a slot like a command, and its outcome comes back under
        `request_id` once applied (or refused: `Code.CONFLICT`, `BAD_REQUEST`,
        `REFUSED`). See `pnyx.protocol.multipaxos.membership`."""
        self.pipeline.submit_change(
            request_id, Change(self.node_id, request_id, base, add, remove, promote, move),
            now)
        return self._flush()

    def read(self, request_id: int, query: bytes, mode: ReadMode, now: float) -> LogReady:
        self.reads.add(request_id, query, mode, now)
        return self._flush()

    def read_many(self, requests: list[tuple[int, bytes, ReadMode]], now: float) -> LogReady:
        """Several reads at once: a follower asks the leader for one read index for all
        its linearizable ones (a driver gathers what arrives in one loop iteration)."""
        add = self.reads.add
        for request_id, query, mode in requests:
            add(request_id, query, mode, now)
        return self._flush()

    def cancel(self, request_id: int) -> None:
        """The client gave up: forget the request (a command may still be applied)."""
        self.pipeline.cancel(request_id)
        self.reads.cancel(request_id)

    def receive(self, data: bytes, now: float) -> LogReady:
        try:
            message = decode(data)
        except MalformedMessage:
            self.dropped += 1
            return self._flush()
        return self.step(message, now)

    def step(self, m: LogMessage, now: float) -> LogReady:
        if not isinstance(m, LOG_MESSAGE_TYPES) or not self._may_hear(m, now):
            self.dropped += 1
            return self._flush()
        election = self.election
        # The common messages first: a match tries its cases in order.
        match m:
            case Accept():
                if election.observe(m.ballot, now) and self.acceptor.on_accept(m):
                    election.follow(m.src, m.ballot, now)
                    self.log.learn_commit(m.ballot, m.commit, now)
            case Accepted():
                self.pipeline.on_accepted(m, now)
            case Heartbeat():
                election.on_heartbeat(m, now)
            case HeartbeatAck():
                election.on_heartbeat_ack(m, now)
            case Forward():
                self.pipeline.on_forward(m, now)
            case Prepare():
                election.on_prepare(m, now)
            case Promise():
                if not election.on_promise(m, now):
                    self.dropped += 1  # not a part of anything: a faulty sender
            case Rejected():
                election.on_rejected(m, now)
            case PreVote():
                election.on_prevote(m, now)
            case PreVoteReply():
                election.on_prevote_reply(m, now)
            case CatchUp():
                self.log.on_catch_up(m)
            case Chosen():
                self.log.on_chosen(m, now)
            case Aborted():
                self.pipeline.on_aborted(m)
            case ReadIndex():
                self.reads.on_read_index(m, now)
            case ReadIndexReply():
                self.reads.on_read_index_reply(m)
            case QuorumRead():
                self.reads.on_quorum_read(m)
            case QuorumReadReply():
                self.reads.on_quorum_read_reply(m)
            case SnapshotChunk():
                self.transfer.on_chunk(m, now)
            case SnapshotRequest():
                self.transfer.on_request(m, now)
            case SnapshotOffer():
                self.transfer.on_offer(m, now)
            case Probe():
                self.standings.on_probe(m)
            case ProbeReply():
                self.standings.on_probe_reply(m)
            case ChangeMembers():
                self.pipeline.on_change_members(m, now)
            case ChangeRefused():
                self.pipeline.on_change_refused(m)
            case Removed():
                # Only a removed id is told so (ids are never reused), by a member that
                # applied its removal: believed even if we did not (we were cut off).
                if m.version > self.membership.latest.version \
                        or self.node_id in self.membership.retired:
                    self.removed = True
        return self._flush()

    def _may_hear(self, m: LogMessage, now: float) -> bool:
        """Members are heard; so is anyone not removed while we know no configuration
        holding us (we joined, and have not yet learned the ones after the first), and
        a leader's heartbeat and the log (catch-up, snapshots) from anyone not removed.
        A removed member is told so (at most once per heartbeat interval)."""
        src = m.src
        if type(src) is not int:
            return False
        if src in self._members:
            return True
        membership = self.membership
        if src in membership.retired:
            interval = self.config.heartbeat_interval
            last = self._removed_told.get(src)
            if last is None or now - last >= interval:
                self._removed_told[src] = now
                self.out.send(src, Removed(self.node_id, membership.latest.version))
            return False
        if src > 0 and isinstance(m, Heartbeat | Chosen | SnapshotOffer | SnapshotChunk):
            # Not retired, so a member added after the configurations we know (we were
            # away, or lost our disk, while the cluster changed; ids are never reused):
            # we follow its leader and take the log it sends, which tells us who else.
            return True
        return src > 0 and self.node_id not in self._members

    def _members_changed(self) -> None:
        """The configurations changed: whom we send to and hear from follows."""
        membership = self.membership
        membership.changed = False
        members = membership.members()
        self._members = members
        self.out.members = tuple(sorted(members | {self.node_id}))
        self.election.others = tuple(m for m in self.out.members if m != self.node_id)
        self.out.ready.members_changed = True
        if self.node_id in membership.retired and membership.removed(
                self.node_id, self.log.commit):
            self.removed = True

    def tick(self, now: float) -> LogReady:
        self.standings.tick(now)
        self.election.tick(now)
        self.log.tick(now)
        self.transfer.tick(now)
        self.reads.expire(now)
        return self._flush()

    # The snapshot store's answers (see `effects.SnapshotOp`).

    def snapshotted(self, slot: int, index: int, size: int, now: float) -> LogReady:
        """The snapshot asked for by `TakeSnapshot(slot, index)` is durable, `size` bytes
        (0: it could not be written; the log is kept whole)."""
        self.log.snapshotted(slot, index, size, now)
        return self._flush()

    def staged(self, slot: int, size: int, now: float) -> LogReady:
        """`size` bytes of snapshot `slot` are staged (0 after it was refused)."""
        self.transfer.staged(slot, size, now)
        return self._flush()

    def installed(self, slot: int, index: int, size: int, now: float,
                  membership: bytes = b"") -> LogReady:
        """The machine was restored from snapshot `slot` (now the node's durable one),
        which carried `membership` (the membership after its slot)."""
        self.log.install(slot, index, size, now, membership)
        return self._flush()

    def snapshot_gone(self, dst: int) -> LogReady:
        """A `SendChunk` for `dst` found no file: offer it the one we have."""
        self.transfer.gone(dst)
        return self._flush()

    def persisted(self, seq: int) -> LogReady:
        """Every record up to `seq` is durable: release the messages that waited for it."""
        self.out.persisted(seq)
        return self._flush()

    def _flush(self) -> LogReady:
        if self.membership.changed:
            self._members_changed()
        if self.reads.to_ask:
            self.reads.ask()  # one ReadIndex for the reads of this call
        election = self.election
        leading = election.role is Role.LEADER
        wake = None if leading else election.election_at
        log = self.log
        for deadline in (election.hb_at, log.catchup_at, log.compact_at,
                         self.transfer.next_deadline(),
                         self.standings.next_deadline(), self.reads.next_deadline(leading)):
            if deadline is not None and (wake is None or deadline < wake):
                wake = deadline
        ready = self.out.take()
        ready.wake_at = wake
        ready.removed = self.removed
        return ready

    # ========================================================= inspection

    def durable(self) -> ReplicaDurable:
        """The state the records so far add up to (whether or not yet durable)."""
        a = self.acceptor
        return ReplicaDurable(a.promised, a.last_round, dict(a.accepted), dict(self.log.chosen),
                              a.compacted, self.standings.standing)

    def check_invariants(self) -> None:
        """Assert every unit's invariants (cheap: a simulator may call it after each
        event). Raises AssertionError naming what broke."""
        self.out.check_invariants()
        self.acceptor.check_invariants()
        self.log.check_invariants()
        self.election.check_invariants()
        self.pipeline.check_invariants()
        self.reads.check_invariants()
        self.transfer.check_invariants()
        self.standings.check_invariants()
        self.membership.check_invariants()
        assert self.acceptor.compacted <= self.log.floor, (
            self.acceptor.compacted, self.log.floor)
        if self.election.role is Role.LEADER:
            assert self.log.commit < self.pipeline.next_slot, (
                self.log.commit, self.pipeline.next_slot)

    @property
    def standing(self) -> Standing:
        return self.standings.standing

    @property
    def in_flight(self) -> int:
        """Slots this leader proposed that it does not know chosen yet (0 unless leading)."""
        return len(self.pipeline.inflight)

    @property
    def is_leader(self) -> bool:
        return self.election.role is Role.LEADER

    @property
    def quorums(self) -> QuorumSystem:
        """The quorums of the configuration governing the next slot."""
        membership = self.membership
        return membership.quorums(membership.at(self.log.commit + 1))

    @property
    def configuration(self) -> Config:
        """The configuration governing the next slot (`configs`: and those to come)."""
        return self.membership.at(self.log.commit + 1)

    @property
    def configs(self) -> list[Config]:
        """Read-only: the configurations known, the one in force first."""
        return list(self.membership.configs)

    @property
    def progress(self) -> dict[int, int]:
        """LEADER: the slot each member last said it applied (learners' catch-up)."""
        return dict(self.pipeline.progress)

    @property
    def others(self) -> tuple[int, ...]:
        return self.election.others

    # The election's state.
    @property
    def role(self) -> Role:
        return self.election.role

    @property
    def leader(self) -> int | None:
        return self.election.leader

    @property
    def leader_ballot(self) -> Ballot:
        return self.election.leader_ballot

    @property
    def ballot(self) -> Ballot:
        return self.election.ballot

    # The acceptor's state.
    @property
    def promised(self) -> Ballot:
        return self.acceptor.promised

    @property
    def accepted(self) -> dict[int, Entry]:
        return self.acceptor.accepted

    @property
    def max_accepted(self) -> int:
        return self.acceptor.max_accepted

    @property
    def last_round(self) -> int:
        return self.acceptor.last_round

    @property
    def highest_seen(self) -> Ballot:
        return self.acceptor.highest_seen

    # The log's state.
    @property
    def chosen(self) -> dict[int, Batch]:
        return self.log.chosen

    @property
    def max_chosen(self) -> int:
        return self.log.max_chosen

    @property
    def commit(self) -> int:
        return self.log.commit

    @property
    def applied(self) -> int:
        return self.log.applied

    @property
    def applied_index(self) -> int:
        return self.log.applied_index

    # The pipeline's state.
    @property
    def next_slot(self) -> int:
        return self.pipeline.next_slot

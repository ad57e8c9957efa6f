"""Leadership: pre-vote, phase 1 for every slot at once, becoming the leader,
keeping the ballot with heartbeats, stepping down, following another.

A follower that has not heard from a leader within a randomized election
timeout (the seed's liveness rule: a distinguished proposer, elected with
randomness and timeouts) becomes a PRE_CANDIDATE: it asks the others whether
they miss the leader too (`PreVote`, Raft's pre-vote) and runs phase 1 only
if a quorum agrees, so a replica returning from a partition cannot depose a
healthy leader. As a CANDIDATE its one `Prepare` covers every slot from the
first it does not know chosen, except the later ones it does know (the
seed's 135-137 example); each `Promise`, in as many parts as it needs,
reports every entry accepted in that range. With a phase-1 quorum of
promises it becomes the LEADER and re-proposes each recovered slot with the
highest-numbered value reported for it, or a no-op (`pick_value`). Any
replica that sees a higher ballot steps down; a leader cut off from a
quorum for two election timeouts steps down too, so clients fail over.

A replica that does not vote (`pnyx.protocol.multipaxos.standing`) never
stands for election, grants a pre-vote or acks a heartbeat: it only follows;
nor does a learner of the configuration (`pnyx.protocol.multipaxos.membership`).
Every quorum here — of pre-votes, of promises, of heartbeat acks — is counted
among the voters of every configuration that governs the slots a leader may
propose in next (`Membership.is_quorum`: commit+1 .. commit+ALPHA).
A candidate told by a promise that the acceptor compacted slots it would have
to recover (`Promise.compacted` >= its first slot) cannot recover them by
phase 1: it gives up the election and catches up from that acceptor first.

Leader leases (opt-in, `ReplicaConfig.read_lease`). A member with a lease
configured keeps a guard: for an election timeout after it last heard the
leader (or started), it promises no other ballot and does not stand itself
(`guarding`), and its heartbeat acks say so (`HeartbeatAck.lease`). Once a
quorum of guarding members (ourself included) acked a round sent at time s,
no other ballot can gather a phase-1 quorum before s + election_timeout (the
quorums intersect in a member that is still guarding, or in us, and we step
down before we promise); so until s + read_lease the leader knows every slot
chosen, and answers linearizable reads at once (`has_lease`). The clock
assumption: members' clocks run at rates that differ by less than
(election_timeout - read_lease) / election_timeout; no bound on their offsets.

    leader L                      follower F (guarding)
      |--Heartbeat(r), at s------->|  heard_at = t >= s
      |<--HeartbeatAck(r, lease)---|  no promise to another before t + timeout
      |  a quorum acked r: reads answered at once until s + read_lease
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.membership import ALPHA
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Batch,
    Entry,
    Heartbeat,
    HeartbeatAck,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Rejected,
)
from pnyx.protocol.synod.proposer import highest_numbered

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.acceptor import Acceptor
    from pnyx.protocol.multipaxos.log import Log
    from pnyx.protocol.multipaxos.pipeline import Pipeline
    from pnyx.protocol.multipaxos.reads import Reads
    from pnyx.protocol.multipaxos.standing import Standings


class Role(enum.Enum):
    """What the outside sees (status, metrics): a pre-candidate is still a follower."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Stage(enum.Enum):
    """Where this replica is in an election."""

    FOLLOWER = "follower"  # follows `leader`, or waits for one
    PRE_CANDIDATE = "pre-candidate"  # asked for pre-votes for `prevote_ballot`
    CANDIDATE = "candidate"  # sent Prepare for `ballot`, gathers promises
    LEADER = "leader"  # the distinguished proposer and learner, in `ballot`


ROLE_OF = {
    Stage.FOLLOWER: Role.FOLLOWER,
    Stage.PRE_CANDIDATE: Role.FOLLOWER,
    Stage.CANDIDATE: Role.CANDIDATE,
    Stage.LEADER: Role.LEADER,
}


class Election:
    acceptor: Acceptor
    log: Log
    pipeline: Pipeline
    reads: Reads
    standings: Standings

    def __init__(self, node_id: int, config: ReplicaConfig, rng: random.Random, out: Outbox,
                 now: float) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.out = out
        # Every other member of a configuration known (the replica keeps it current).
        self.others = tuple(m for m in config.members if m != node_id)
        # Invariant: role is ROLE_OF[stage]; both change only in `_enter`.
        self.stage = Stage.FOLLOWER
        self.role = Role.FOLLOWER
        # The leader we follow (ourself when LEADER); None when none is known.
        self.leader: int | None = None
        # The ballot `leader` leads with. Never decreases while following one leader.
        self.leader_ballot = ZERO
        # Ours, when CANDIDATE or LEADER. Invariant: round <= acceptor.last_round.
        self.ballot = ZERO
        self.heard_at = now  # when the leader was last heard from
        # When to suspect the leader (or give up this election). Drawn at random.
        self.election_at = now + self.election_wait()
        # PRE_CANDIDATE: the ballot we asked pre-votes for, and who granted it.
        self.prevote_ballot = ZERO
        self.prevotes: set[int] = set()
        # CANDIDATE: complete promises, by acceptor; and the parts of incomplete ones.
        self.promises: dict[int, Promise] = {}
        self.promise_parts: dict[int, dict[int, Promise]] = {}
        # CANDIDATE and LEADER: the acceptors whose whole promise for `ballot` we hold
        # (a leader may propose in a slot once they hold a phase-1 quorum of its
        # configuration: `Pipeline.may_propose`).
        self.promised_by: set[int] = set()
        self.first = 1  # first slot of our phase 1
        # LEADER: the slot up to which phase 1 recovered the log (no read may be
        # answered with an index below it).
        self.recovered_at = 0
        # LEADER's heartbeats: when the next is due (None unless leading), its round,
        # who acked each round still open, and the latest round a quorum acked.
        # Invariant: confirmed_round <= hb_round; every key of acks is in
        # (confirmed_round, hb_round].
        self.hb_at: float | None = None
        self.hb_round = 0
        self.acks: dict[int, set[int]] = {}
        self.confirmed_round = 0
        self.quorum_seen_at = now  # when a quorum last acked us
        self.heard_from: dict[int, float] = {}  # LEADER: each acker's last ack
        # LEADER with a read lease: each open round's send time and its guarding ackers
        # (ourself included); reads are answered at once until `lease_until`.
        # Invariant: every key of lease_acks is in (confirmed_round, hb_round].
        self.lease_acks: dict[int, tuple[float, set[int]]] = {}
        self.lease_until = 0.0

    def is_quorum(self, voters: set[int] | dict[int, object], phase1: bool = False) -> bool:
        """A quorum of every configuration governing the slots we may propose in next."""
        first = self.log.commit + 1
        return self.log.membership.is_quorum(voters, first, first + ALPHA - 1, phase1)

    def is_voter(self) -> bool:
        """Whether we vote on any of the slots a leader may propose in next (a learner
        does not stand for election, nor grant a pre-vote). Any, not only the next one:
        a learner promoted in a configuration still to come is a voter the quorums of
        `is_quorum` count on, so it must take part in the elections that need it."""
        first = self.log.commit + 1
        return self.standings.votes and self.node_id in self.log.membership.voters(
            first, first + ALPHA - 1)

    def live_voters(self, now: float) -> set[int]:
        """LEADER: ourself and the members that acked a heartbeat lately."""
        timeout = self.config.election_timeout
        return {self.node_id} | {m for m, t in self.heard_from.items() if now - t <= timeout}

    def _enter(self, stage: Stage) -> None:
        self.stage = stage
        self.role = ROLE_OF[stage]

    def guarding(self, now: float) -> bool:
        """The lease guard holds: a leader may be answering reads on our ack, so we
        promise no other ballot, nor stand, for an election timeout after we last heard
        it (or started: a restart forgets whom we acked)."""
        return self.config.read_lease > 0 and now - self.heard_at < self.config.election_timeout

    def has_lease(self, now: float) -> bool:
        """We lead, and no other ballot can have a phase-1 quorum yet (see the module's
        docstring): a read may be answered with our commit index at once."""
        return self.role is Role.LEADER and now < self.lease_until

    def election_wait(self) -> float:
        t = self.config.election_timeout
        return self.rng.uniform(t, 2 * t)

    def tick(self, now: float) -> None:
        if self.role is Role.LEADER:
            if self.reads.unsent or (self.hb_at is not None and now >= self.hb_at):
                self.heartbeat(now)
            if now - self.quorum_seen_at > 2 * self.config.election_timeout:
                self.step_down(now)  # cut off from a quorum: let clients fail over
        elif now >= self.election_at:
            self.on_election_timeout(now)

    # ---------------------------------------------------------- pre-vote

    def want_leader(self, now: float) -> None:
        """No leader is known: the seed says any member may start phase 1 itself."""
        if self.stage is Stage.FOLLOWER:
            self.on_election_timeout(now)

    def on_election_timeout(self, now: float) -> None:
        self.election_at = now + self.election_wait()
        if self.stage is Stage.CANDIDATE:
            self._enter(Stage.FOLLOWER)  # phase 1 did not finish in time: try again
        if self.leader is not None and now - self.heard_at < self.config.election_timeout:
            return
        if self.guarding(now):
            return  # no leader known, but one we acked may still hold a lease on it
        if self.leader is not None:
            self.lose_leader()
        if not self.is_voter():
            # A learner never stands, so, hearing no leader, it asks a member for the log
            # instead: a leader sends nothing to one whose removal governs, and we may
            # have been cut off before we heard of it (the member answers `Removed`).
            self.log.catch_up(now)
            return
        if self.config.prevote and self.others:
            self._enter(Stage.PRE_CANDIDATE)
            self.prevote_ballot = self.acceptor.next_ballot()
            self.prevotes = {self.node_id}
            self.out.broadcast(PreVote(self.node_id, self.prevote_ballot))
        else:
            self.start_phase1(now)

    def misses_leader(self, now: float) -> bool:
        return (
            self.role is not Role.LEADER
            and (self.leader is None or now - self.heard_at >= self.config.election_timeout)
        )

    def on_prevote(self, m: PreVote, now: float) -> None:
        misses = self.misses_leader(now)
        voter = self.is_voter()
        granted = voter and m.ballot > self.acceptor.promised and misses
        if not voter and misses and self.standings.votes and self.log.catchup_at is None:
            # A voter of the candidate's configuration asks us: we may have been
            # promoted in slots we have not learned yet. Ask it for them.
            self.log.catch_up(now, m.src)
        # Refused for a leader we still hear: say which, so the asker knows it is cut off
        # from a leader that lives (the bridge), and which.
        leader = self.leader if not granted and not misses and self.leader is not None else 0
        self.out.send(m.src, PreVoteReply(self.node_id, m.ballot, granted, leader))

    def on_prevote_reply(self, m: PreVoteReply, now: float) -> None:
        if self.stage is not Stage.PRE_CANDIDATE or m.ballot != self.prevote_ballot \
                or not m.granted:
            return
        self.prevotes.add(m.src)
        if self.is_quorum(self.prevotes, phase1=True):
            self.start_phase1(now)

    # ----------------------------------------------------------- phase 1

    def start_phase1(self, now: float) -> None:
        self._enter(Stage.CANDIDATE)
        self.ballot = self.acceptor.next_ballot()
        self.acceptor.use_round(self.ballot.round)  # a ballot is never used twice
        self.promises = {}
        self.promise_parts = {}
        self.promised_by = set()
        self.first = self.log.commit + 1
        known = self.log.chosen_beyond_commit()
        self.election_at = now + self.election_wait()
        self.out.broadcast(Prepare(self.node_id, self.ballot, self.first, known),
                           include_self=True, gated=True)

    def on_prepare(self, m: Prepare, now: float) -> None:
        """The acceptor's side of phase 1, and what it means for whom we follow."""
        if (m.src != self.node_id and self.role is not Role.LEADER
                and m.ballot != self.leader_ballot and self.guarding(now)):
            # A leader may hold a lease on our ack: no promise to another ballot yet.
            # Its own ballot's Prepare (asking a new configuration's voters) is answered.
            return
        if not self.observe(m.ballot, now):
            return
        if self.acceptor.on_prepare(m) and m.src != self.node_id and self.leader is not None:
            self.lose_leader()  # a new leader is being elected

    def on_promise(self, m: Promise, now: float) -> bool:
        """Count a part of a promise; False if it is not a part of anything."""
        if self.stage not in (Stage.CANDIDATE, Stage.LEADER) or m.ballot != self.ballot \
                or m.src in self.promised_by:
            return True
        if m.part >= m.parts:
            return False  # a faulty sender
        parts = self.promise_parts.setdefault(m.src, {})
        parts[m.part] = m
        if len(parts) < m.parts or any(p.parts != m.parts for p in parts.values()):
            return True
        # Every part is in: the promise counts, with all the entries it reports.
        if self.stage is Stage.LEADER:
            # Asked as we reached a configuration we had no quorum of (`ask_promises`).
            del self.promise_parts[m.src]
            if any(p.compacted >= self.pipeline.recovered + 1 for p in parts.values()):
                # It has a snapshot past slots we still recover: they are chosen, and we
                # cannot learn them by phase 1. Catch up first, as a candidate would.
                self.step_down(now)
                self.log.catch_up(now, m.src)
                return True
            self.promised_by.add(m.src)
            self.pipeline.on_promise(
                m.src, tuple(e for i in range(m.parts) for e in parts[i].entries), now)
            self.recovered_at = max(self.recovered_at, self.pipeline.recover_to)
            return True
        if any(p.compacted >= self.first for p in parts.values()):
            # It forgot slots we would recover: they are chosen, and only its snapshot
            # has them. We cannot lead before we have them.
            self._enter(Stage.FOLLOWER)
            self.promises = {}
            self.promise_parts = {}
            self.log.catch_up(now, m.src)
            return True
        self.promises[m.src] = Promise(
            m.src, m.ballot, tuple(e for i in range(m.parts) for e in parts[i].entries))
        self.promised_by.add(m.src)
        if self.is_quorum(self.promised_by, phase1=True):
            self.become_leader(now)
        return True

    def become_leader(self, now: float) -> None:
        self._enter(Stage.LEADER)
        log, pipeline = self.log, self.pipeline
        log.lead()
        self.leader = self.node_id
        self.leader_ballot = self.ballot
        self.quorum_seen_at = now
        self.heard_from = dict.fromkeys(self.promised_by, now)
        reported: dict[int, list[Entry]] = {}
        for promise in self.promises.values():
            for e in promise.entries:
                reported.setdefault(e.slot, []).append(e)
        self.promises = {}
        self.promise_parts = {}
        last = max([log.commit, *reported, *log.chosen_beyond_commit()])
        self.recovered_at = last
        # Each slot from `first` to `last` is proposed again with the value `pick_value`
        # finds among the promises (or is known chosen): ALPHA slots at a time, since a
        # slot's configuration is known only once the slots ALPHA below it are chosen.
        pipeline.lead(self.first, reported, last, now)
        self.reads.lead(now)  # reads that waited for a leader are now ours to confirm
        self.heartbeat(now)

    def pick_value(self, reported: Iterable[Entry]) -> Batch:
        """Gap filling: the highest-numbered value accepted in the slot, else a no-op."""
        highest = highest_numbered(reported)
        return NOOP if highest is None else highest.value

    # ------------------------------------------------ ballots seen, leaders

    def observe(self, ballot: Ballot, now: float) -> bool:
        """A peer's ballot, before its message is acted on: whether it is within reach
        (`pnyx.protocol.ballot.sight`); the caller ignores the message if not. A refused
        ballot still counts as a higher one seen (we step down), so that an honest
        replica far ahead of us is caught up with."""
        admitted = self.acceptor.observe(ballot)
        seen = ballot if admitted else self.acceptor.highest_seen
        if self.role is not Role.FOLLOWER and seen > self.ballot:
            self.step_down(now)
        return admitted

    def follow(self, src: int, ballot: Ballot, now: float) -> None:
        """`src` leads with `ballot`, which we did not refuse."""
        if src == self.node_id:
            return
        if ballot > self.leader_ballot or self.leader != src:
            if self.role is not Role.FOLLOWER:
                self.step_down(now)
            self.lose_leader()
            self.leader = src
            self.leader_ballot = ballot
            self._enter(Stage.FOLLOWER)  # a pre-candidate no more
            self.pipeline.route_unrouted(now)
            self.reads.follow(src)
        self.heard_at = now
        self.election_at = now + self.election_wait()

    def lose_leader(self) -> None:
        """The leader we followed is gone: what we forwarded to it may never be chosen."""
        self.leader = None
        self.pipeline.abort_forwarded()

    def step_down(self, now: float) -> None:
        """We lost our ballot: fail fast every command and read we had not answered."""
        if self.role is Role.FOLLOWER:
            return
        was_leader = self.role is Role.LEADER
        self._enter(Stage.FOLLOWER)
        self.leader = None
        self.hb_at = None
        self.acks.clear()
        self.lease_acks.clear()
        self.lease_until = 0.0
        self.election_at = now + self.election_wait()
        if was_leader:
            self.pipeline.lose_ballot()
            self.reads.lose_ballot()

    def on_rejected(self, m: Rejected, now: float) -> None:
        if not self.observe(m.promised, now):
            return
        if m.ballot == self.ballot and m.promised > self.ballot:
            self.step_down(now)

    # -------------------------------------------------------- heartbeats

    def heartbeat(self, now: float) -> None:
        self.hb_round += 1
        self.hb_at = now + self.config.heartbeat_interval
        lease = self.config.read_lease
        if self.is_quorum({self.node_id}):
            self.confirmed_round = self.hb_round  # a cluster of one confirms itself
            self.quorum_seen_at = now
            if lease:
                self.lease_until = now + lease
        else:
            self.acks[self.hb_round] = {self.node_id}
            if lease:
                self.lease_acks[self.hb_round] = (now, {self.node_id})
        self.reads.round_sent(self.hb_round, self.log.commit)
        self._send_heartbeat(self.hb_round, now)

    def announce_commit(self, now: float) -> None:
        """Tell the followers the commit index now, as a heartbeat of round 0: one that
        asks for no ack. It confirms no reads and proves no quorum (the periodic rounds
        do), so it waits for none of the followers' answers, and costs them none. Like
        a round, it asks again for the slots in flight too long, and answers the reads
        whose round was confirmed before the commit point reached what phase 1
        recovered (`Reads.ack`)."""
        self._send_heartbeat(0, now)

    def _send_heartbeat(self, rnd: int, now: float) -> None:
        """Heartbeat `rnd` (0: no ack wanted) with the commit index; then what every
        heartbeat does: ask again for the slots in flight too long, and answer the reads
        its confirmed rounds allow."""
        commit = self.log.commit
        self.pipeline.told_commit = commit
        self.out.broadcast(Heartbeat(self.node_id, self.ballot, commit, rnd))
        self.pipeline.retransmit(now)
        self.reads.ack(self.confirmed_round)

    def on_heartbeat(self, m: Heartbeat, now: float) -> None:
        if not self.observe(m.ballot, now):
            return
        acceptor = self.acceptor
        if m.ballot < acceptor.promised:
            self.out.emit(m.src, Rejected(self.node_id, m.ballot, acceptor.promised))
            return
        self.follow(m.src, m.ballot, now)
        if m.round and self.standings.votes:
            # Round 0 (`announce_commit`) wants no ack. One that lost its disk does not
            # ack: its ack would count as a vote. A learner of the configuration acks
            # too: its ack counts in no quorum, and tells the leader how far it has
            # caught up.
            self.out.send(m.src, HeartbeatAck(self.node_id, m.ballot, m.round,
                                              acceptor.max_accepted, self.log.applied,
                                              self.config.read_lease > 0))
        self.log.learn_commit(m.ballot, m.commit, now)

    def on_heartbeat_ack(self, m: HeartbeatAck, now: float) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        self.heard_from[m.src] = now
        self.pipeline.note_progress(m.src, m.applied, now)
        self.pipeline.close_orphans(m.accepted, now)
        acks = self.acks.get(m.round)
        if acks is None:
            return
        acks.add(m.src)
        if m.lease and m.round in self.lease_acks:
            sent_at, guards = self.lease_acks[m.round]
            guards.add(m.src)
            if self.is_quorum(guards):
                self.lease_until = max(self.lease_until, sent_at + self.config.read_lease)
        if self.is_quorum(acks):
            self.quorum_seen_at = now
            # A quorum acked this round, so it confirms every earlier one too.
            self.confirmed_round = m.round
            for rnd in [r for r in self.acks if r <= m.round]:
                del self.acks[rnd]
            for rnd in [r for r in self.lease_acks if r <= m.round]:
                del self.lease_acks[rnd]
            self.reads.ack(m.round)

    def check_invariants(self) -> None:
        assert self.role is ROLE_OF[self.stage], (self.role, self.stage)
        assert self.lease_acks.keys() <= self.acks.keys(), (self.lease_acks, self.acks)
        assert self.role is Role.LEADER or self.lease_until == 0.0, self.lease_until
        last_round = self.acceptor.last_round
        assert self.ballot.round <= last_round, (self.ballot, last_round)
        if self.stage is Stage.LEADER:
            assert self.leader == self.node_id and self.leader_ballot == self.ballot
            assert self.hb_at is not None
        if self.stage in (Stage.CANDIDATE, Stage.LEADER):
            assert self.ballot.node_id == self.node_id, self.ballot
        assert self.confirmed_round <= self.hb_round, (self.confirmed_round, self.hb_round)
        for rnd in self.acks:
            assert self.confirmed_round < rnd <= self.hb_round, (rnd, self.confirmed_round)

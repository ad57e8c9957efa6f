"""Commands on their way into the log: routing, the leader's queue, batching, the
window of slots in flight and their votes, retransmission.

Any member takes a client's command (the seed's "write through any member"):
the leader queues it, a follower forwards it to the leader, and a member
that knows no leader holds it and starts an election. The leader fills up
to `window` slots at once (the seed's "propose 142 before 141 is chosen"),
each holding a batch of the commands that queued while the window was full,
and counts each slot's `Accepted` by the learner rule (`Votes`). Every
command that entered here waits in `waiting` until it is applied (its
outcome goes to the client) or its leader loses its ballot (aborted).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.log import Votes
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Aborted,
    Accept,
    Accepted,
    Batch,
    Command,
    Forward,
    in_parts,
    payload_size,
)
from pnyx.protocol.multipaxos.outcome import Code, Outcome

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.election import Election
    from pnyx.protocol.multipaxos.log import Log


class InFlight(Votes):
    """A slot the leader proposed in `ballot` and has not yet seen chosen."""

    __slots__ = ("sent_at", "value")

    def __init__(self, value: Batch, ballot: Ballot, quorums: object, sent_at: float) -> None:
        Votes.__init__(self, ballot, quorums)  # type: ignore[arg-type]
        self.value = value
        self.sent_at = sent_at  # when its Accept last went out


class Pipeline:
    election: Election
    log: Log

    def __init__(self, node_id: int, config: ReplicaConfig, out: Outbox) -> None:
        self.node_id = node_id
        self.config = config
        self.quorums = config.quorums
        self.out = out
        # The leader's commands not yet in a slot. Invariant: empty unless leader.
        self.queue: deque[Command] = deque()
        # slot -> its proposal. Invariant: empty unless leader; at most `window` from
        # fill_window (phase-1 recovery may add more); every slot < next_slot, > commit
        # of the moment it was proposed, and proposed in the leader's current ballot.
        self.inflight: dict[int, InFlight] = {}
        # The leader's next fresh slot. Invariant (leader): above every slot in flight.
        self.next_slot = 1
        # The commit index the followers were last sent (on an Accept or a Heartbeat).
        self.told_commit = 0
        # request id -> our clients' commands not yet applied (nor aborted).
        self.waiting: dict[int, Command] = {}
        # request id -> commands of ours sent to a leader. Invariant: a subset of waiting.
        self.forwarded: dict[int, Command] = {}
        # Commands waiting for a leader to exist.
        self.unrouted: deque[Command] = deque()

    # ----------------------------------------------------------- routing

    def submit_many(self, requests: list[tuple[int, bytes]], now: float) -> None:
        limit = self.config.max_command
        commands = []
        for request_id, payload in requests:
            if len(payload) > limit:
                self.out.outcome(request_id, Outcome.failed(
                    Code.TOO_LARGE, f"command too large: {len(payload)} bytes, "
                    f"limit {limit}"))
                continue
            command = Command(self.node_id, request_id, payload)
            self.waiting[request_id] = command
            commands.append(command)
        if commands:
            self.route(commands, now)

    def route(self, commands: list[Command], now: float) -> None:
        election = self.election
        if election.role is Role.LEADER:
            self.queue.extend(commands)
            self.fill_window(now)
        elif election.leader is not None:
            for c in commands:
                if c.origin == self.node_id:
                    self.forwarded[c.id] = c
            # In messages of at most a slot's worth of bytes, so each fits in a frame.
            for part in in_parts(tuple(commands), payload_size, self.config.max_batch_bytes):
                self.out.send(election.leader, Forward(self.node_id, part))
        else:
            self.unrouted.extend(commands)
            election.want_leader(now)

    def route_unrouted(self, now: float) -> None:
        """A leader became known: hand it what waited for one."""
        if self.unrouted:
            commands = list(self.unrouted)
            self.unrouted.clear()
            self.route(commands, now)

    def on_forward(self, m: Forward, now: float) -> None:
        if self.election.role is Role.LEADER:
            # A member forwards only the commands its own clients gave it. One naming
            # another origin would, once applied there, answer that member's client
            # request of the same id with someone else's result: it is not proposed.
            commands = m.commands
            if any(c.origin != m.src for c in commands):
                commands = tuple(c for c in commands if c.origin == m.src)
            self.queue.extend(commands)
            self.fill_window(now)
        else:
            self.out.send(m.src, Aborted(self.node_id, tuple(c.id for c in m.commands)))

    def on_aborted(self, m: Aborted) -> None:
        # Only the leader a command was forwarded to can abort it, and only a command it
        # was forwarded: once we follow another leader (or none), `lose_leader` has
        # aborted everything forwarded to the old one already.
        if m.src != self.election.leader:
            return
        for request_id in m.ids:
            if request_id in self.forwarded:
                self.abort_waiter(request_id, "the leader lost its ballot before it was chosen")

    def abort_waiter(self, request_id: int, why: str) -> None:
        if self.waiting.pop(request_id, None) is not None:
            self.forwarded.pop(request_id, None)
            self.out.outcome(request_id, Outcome.failed(Code.ABORTED, f"aborted: {why}",
                                                        unknown=True))

    def abort_forwarded(self) -> None:
        """The leader we followed is gone: what we forwarded to it may never be chosen."""
        for request_id in list(self.forwarded):
            self.abort_waiter(request_id, "the leader changed before it was chosen")

    def done(self, request_id: int, result: bytes, index: int) -> None:
        """Our command was applied at `index` with `result`."""
        if self.waiting.pop(request_id, None) is not None:
            self.forwarded.pop(request_id, None)
            self.out.outcome(request_id, Outcome(True, result, index))

    def cancel(self, request_id: int) -> None:
        command = self.waiting.get(request_id)
        if command is not None:
            # Not proposed anywhere yet: it need never be.
            for queue in (self.unrouted, self.queue):
                if command in queue:
                    queue.remove(command)
        self.waiting.pop(request_id, None)
        self.forwarded.pop(request_id, None)

    # ------------------------------------------------------------ phase 2

    def lead(self, now: float) -> None:
        """We became the leader: what waited for a leader is ours to propose."""
        self.queue.extend(self.unrouted)
        self.unrouted.clear()
        self.fill_window(now)

    def fill_window(self, now: float) -> None:
        cfg = self.config
        queue = self.queue
        election = self.election
        while queue and len(self.inflight) < cfg.window and election.role is Role.LEADER:
            commands = [queue.popleft()]
            size = len(commands[0].payload)
            while queue and len(commands) < cfg.max_batch:
                nxt = len(queue[0].payload)
                if size + nxt > cfg.max_batch_bytes:
                    break
                commands.append(queue.popleft())
                size += nxt
            slot = self.next_slot
            self.next_slot += 1
            self.propose(slot, Batch(tuple(commands)), now)

    def propose(self, slot: int, value: Batch, now: float) -> None:
        ballot = self.election.ballot
        commit = self.log.commit
        self.inflight[slot] = InFlight(value, ballot, self.quorums, now)
        self.told_commit = commit
        self.out.broadcast(Accept(self.node_id, ballot, slot, value, commit), include_self=True)

    def on_accepted(self, m: Accepted, now: float) -> None:
        if self.election.role is not Role.LEADER:
            return
        proposal = self.inflight.get(m.slot)
        if proposal is None or not proposal.accepted(m.src, m.ballot):
            return
        del self.inflight[m.slot]
        log = self.log
        log.learn(m.slot, proposal.value, proposal.ballot)
        log.apply_chosen()
        self.fill_window(now)
        if log.commit > self.told_commit:
            # No Accept is going out to carry the news: tell the followers now, so a
            # client waiting at one of them hears without waiting for the heartbeat.
            self.election.heartbeat(now)

    def close_orphans(self, accepted: int, now: float) -> None:
        """An acker accepted up to slot `accepted`, beyond ours: a slot accepted in an
        older ballot by someone outside our phase-1 quorum, so it cannot have been
        chosen. Close it with no-ops rather than leave quorum reads waiting for it
        until the next write."""
        if accepted >= self.next_slot and accepted < self.next_slot + self.config.window:
            for slot in range(self.next_slot, accepted + 1):
                self.propose(slot, NOOP, now)
            self.next_slot = accepted + 1

    def retransmit(self, now: float) -> None:
        """Messages get lost: ask again whoever has not yet accepted a slot in flight
        too long."""
        interval = self.config.heartbeat_interval
        ballot = self.election.ballot
        commit = self.log.commit
        for slot, proposal in self.inflight.items():
            if now - proposal.sent_at < interval:
                continue
            proposal.sent_at = now
            accept = Accept(self.node_id, ballot, slot, proposal.value, commit)
            for member in self.config.members:
                if member not in proposal.voters:
                    self.out.send(member, accept)

    def lose_ballot(self) -> None:
        """We lost our ballot: fail fast every command we had not got chosen."""
        lost: dict[int, list[int]] = {}
        for proposal in self.inflight.values():
            for c in proposal.value.commands:
                lost.setdefault(c.origin, []).append(c.id)
        for c in self.queue:
            lost.setdefault(c.origin, []).append(c.id)
        self.inflight.clear()
        self.queue.clear()
        for origin, ids in sorted(lost.items()):
            if origin == self.node_id:
                for request_id in ids:
                    self.abort_waiter(request_id, "this leader lost its ballot")
            else:
                self.out.send(origin, Aborted(self.node_id, tuple(ids)))

    def in_flight(self) -> list[tuple[int, Ballot, tuple[int, ...], int]]:
        """Read-only, for observers: each slot in flight as (slot, ballot, the acceptors
        that accepted it so far, its number of commands), in slot order. At most
        `window` slots and a few more."""
        return [(slot, p.ballot, tuple(sorted(p.voters)), len(p.value.commands))
                for slot, p in sorted(self.inflight.items())]

    def check_invariants(self) -> None:
        leading = self.election.role is Role.LEADER
        assert leading or not (self.inflight or self.queue), "proposals without leading"
        if leading:
            ballot = self.election.ballot
            for slot, proposal in self.inflight.items():
                assert 1 <= slot < self.next_slot, (slot, self.next_slot)
                assert proposal.ballot == ballot, (slot, proposal.ballot, ballot)
                assert slot not in self.log.chosen, slot
        assert len(self.forwarded) <= len(self.waiting), "forwarded is not within waiting"

"""Commands on their way into the log: routing, the leader's queue, batching, the
window of slots in flight and their votes, retransmission.

Any member takes a client's command (the seed's "write through any member"):
the leader queues it, a follower forwards it to the leader, and a member
that knows no leader holds it and starts an election. The leader fills up
to `window` slots at once (the seed's "propose 142 before 141 is chosen"),
each holding a batch of the commands that queued while the window was full,
and counts each slot's `Accepted` by the learner rule (`Votes`), among the
voters of the slot's configuration. Every command that entered here waits in
`waiting` until it is applied (its outcome goes to the client) or its leader
loses its ballot (aborted).

A membership change (`pnyx.protocol.multipaxos.membership`) travels the same
way, alone in its slot. The leader proposes in slot s only when `may_propose`:
s is within ALPHA of its commit (so s's configuration is known) and it holds
promises from a phase-1 quorum of that configuration; a new leader therefore
recovers the slots phase 1 reported ALPHA at a time (`recover`), asking the
voters of a configuration it has no quorum of for their promise as it goes.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.log import Votes
from pnyx.protocol.multipaxos.membership import ALPHA, quorums_of, voters_of
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Aborted,
    Accept,
    Accepted,
    Batch,
    Change,
    ChangeMembers,
    ChangeRefused,
    Command,
    Entry,
    Forward,
    Prepare,
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
        # Membership changes: ours waiting for an answer (request id -> change; a
        # change is answered when applied, refused or aborted), those waiting for a
        # leader, and the leader's queue of changes to propose.
        self.changes: dict[int, Change] = {}
        self.forwarded_changes: dict[int, Change] = {}
        self.unrouted_changes: list[Change] = []
        self.change_queue: deque[Change] = deque()
        # LEADER's recovery (phase 1 reported these entries for slots above
        # `recovered`, up to `recover_to`; each is proposed once `may_propose`).
        self.reported: dict[int, list[Entry]] = {}
        self.recovered = 0
        self.recover_to = 0
        # LEADER: fill slots up to here with no-ops when idle (a change takes effect
        # ALPHA slots after its own: so it does at once, not after ALPHA writes).
        self.fill_to = 0
        # LEADER: voters asked for a promise since we lead (a configuration we had no
        # phase-1 quorum of), and when last.
        self.prepared_at: dict[int, float] = {}
        # LEADER: the slot each member last said it applied (HeartbeatAck, CatchUp):
        # a learner's catch-up progress.
        self.progress: dict[int, int] = {}
        # LEADER: learners whose promotion it proposed itself and has not seen applied.
        self.promoting: set[int] = set()

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
        if self.unrouted_changes:
            changes, self.unrouted_changes = self.unrouted_changes, []
            for change in changes:
                self.route_change(change, now)

    # ------------------------------------------------------ membership changes

    def submit_change(self, request_id: int, change: Change, now: float) -> None:
        """A client's membership change reached this member (`change.origin` is us and
        `change.id` is `request_id`)."""
        self.changes[request_id] = change
        self.route_change(change, now)

    def route_change(self, change: Change, now: float) -> None:
        election = self.election
        if election.role is Role.LEADER:
            self.queue_change(change, now)
        elif election.leader is not None:
            self.forwarded_changes[change.id] = change
            self.out.send(election.leader, ChangeMembers(self.node_id, change))
        else:
            self.unrouted_changes.append(change)
            election.want_leader(now)

    def on_change_members(self, m: ChangeMembers, now: float) -> None:
        change = m.change
        if change.origin != m.src:
            return  # only its own clients' changes, as with `Forward`
        if self.election.role is Role.LEADER:
            self.queue_change(change, now)
        else:
            self.out.send(m.src, Aborted(self.node_id, (change.id,)))

    def queue_change(self, change: Change, now: float) -> None:
        """The leader's side: propose it, unless it would leave the cluster without a
        live quorum or promote a learner that has not caught up."""
        why = self.refusal(change, now)
        if why:
            self.change_refused(change, Code.REFUSED, why)
            return
        self.change_queue.append(change)
        self.fill_window(now)

    def refusal(self, change: Change, now: float) -> str:
        """Why the leader will not propose `change` now ("" if it will). The rules that
        depend on the live cluster, so they are the leader's, at proposal time; those
        that depend only on the configuration are `Membership.invalid`, at apply time."""
        membership = self.log.membership
        latest = membership.latest.version
        if change.base > latest:
            # Made against a configuration we have not applied yet (a new leader still
            # recovering): it may be valid by the time it is applied, so the rules below
            # must see that configuration, not ours.
            return (f"this leader has not yet applied configuration version "
                    f"{change.base} (it is at {latest}); ask again")
        invalid = membership.invalid(change)
        if invalid:
            return ""  # refused when applied, with the same words, in its slot's order
        for i in change.promote:
            if not self.caught_up(i):
                return (f"node {i} has not caught up yet (applied slot "
                        f"{self.progress.get(i, 0)}, the leader's commit is {self.log.commit}); "
                        f"it is promoted once it is within {ALPHA} slots")
        after = membership.changed_config(membership.latest, change, 1)
        live = self.election.live_voters(now)
        # Not `membership.quorums`: that caches by version, and `after` is only what the
        # next version would be if this change took (another change may take instead).
        q = quorums_of(after)
        if not q.is_phase2_quorum(live):
            down = sorted(set(voters_of(after)) - live)
            return (f"the voters after the change would be {list(voters_of(after))}, and "
                    f"{down} have not answered lately: no live quorum would be left")
        return ""

    def caught_up(self, node_id: int) -> bool:
        """The promotion rule: a learner votes once it has applied every slot up to
        within ALPHA of the leader's commit (its snapshot installed, the log after it
        fetched), so the quorum it joins does not wait on it. Only a learner we have
        heard from: early in a log (commit <= ALPHA) one never heard from, perhaps
        unreachable, would pass, and a voter that never answers costs the quorum."""
        applied = self.progress.get(node_id)
        return applied is not None and applied >= self.log.commit - ALPHA

    def change_refused(self, change: Change, code: Code, why: str) -> None:
        if change.origin == self.node_id:
            self.answer_change(change.id, Outcome.failed(code, why))
        else:
            self.out.send(change.origin, ChangeRefused(self.node_id, change.id, code.value,
                                                        why))

    def on_change_refused(self, m: ChangeRefused) -> None:
        if m.src != self.election.leader or m.id not in self.forwarded_changes:
            return
        try:
            code = Code(m.code)
        except ValueError:
            code = Code.REFUSED
        self.answer_change(m.id, Outcome.failed(code, m.error))

    def answer_change(self, request_id: int, outcome: Outcome) -> None:
        if self.changes.pop(request_id, None) is not None:
            self.forwarded_changes.pop(request_id, None)
            self.out.outcome(request_id, outcome)

    def change_applied(self, slot: int, change: Change, code: Code, why: str,
                       index: int) -> None:
        """`change`, chosen in `slot`, was applied (code NONE) or refused (`why`)."""
        if self.election.role is Role.LEADER:
            self.fill_to = max(self.fill_to, slot + ALPHA - 1)
        self.promoting.difference_update(change.promote)
        if change.origin != self.node_id:
            return
        if code is Code.NONE:
            self.answer_change(change.id, Outcome(True, b"", index))
        else:
            self.answer_change(change.id, Outcome.failed(code, why))

    def note_progress(self, src: int, applied: int, now: float) -> None:
        if applied > self.progress.get(src, 0):
            self.progress[src] = applied
            self.promote_caught_up(now)

    def promote_caught_up(self, now: float) -> None:
        """LEADER: propose the promotion of every learner added to be promoted
        (`Member.promote`) that has caught up. Its own change (id 0: no client waits)."""
        latest = self.log.membership.latest
        for m in latest.members:
            if (m.promote and not m.voter and m.id not in self.promoting
                    and self.caught_up(m.id)):
                change = Change(self.node_id, 0, latest.version, promote=(m.id,))
                if not self.refusal(change, now):
                    self.promoting.add(m.id)
                    self.change_queue.append(change)
                    self.fill_window(now)
                return  # one at a time: the next is made against the version this makes

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
            if request_id in self.forwarded or request_id in self.forwarded_changes:
                self.abort_waiter(request_id, "the leader lost its ballot before it was chosen")

    def abort_waiter(self, request_id: int, why: str) -> None:
        if request_id in self.changes:
            self.answer_change(request_id, Outcome.failed(
                Code.ABORTED, f"aborted: {why}", unknown=True))
            return
        if self.waiting.pop(request_id, None) is not None:
            self.forwarded.pop(request_id, None)
            self.out.outcome(request_id, Outcome.failed(Code.ABORTED, f"aborted: {why}",
                                                        unknown=True))

    def abort_forwarded(self) -> None:
        """The leader we followed is gone: what we forwarded to it may never be chosen."""
        for request_id in [*self.forwarded, *self.forwarded_changes]:
            self.abort_waiter(request_id, "the leader changed before it was chosen")

    def done(self, request_id: int, result: bytes, index: int) -> None:
        """Our command was applied at `index` with `result`."""
        if self.waiting.pop(request_id, None) is not None:
            self.forwarded.pop(request_id, None)
            self.out.outcome(request_id, Outcome(True, result, index))

    def cancel(self, request_id: int) -> None:
        change = self.changes.pop(request_id, None)
        if change is not None:
            self.forwarded_changes.pop(request_id, None)
            if change in self.unrouted_changes:
                self.unrouted_changes.remove(change)
            if change in self.change_queue:
                self.change_queue.remove(change)
            return
        command = self.waiting.get(request_id)
        if command is not None:
            # Not proposed anywhere yet: it need never be.
            for queue in (self.unrouted, self.queue):
                if command in queue:
                    queue.remove(command)
        self.waiting.pop(request_id, None)
        self.forwarded.pop(request_id, None)

    # ------------------------------------------------------------ phase 2

    def lead(self, first: int, reported: dict[int, list[Entry]], last: int,
             now: float) -> None:
        """We became the leader: recover slots `first`..`last` from what phase 1
        `reported` (each as soon as `may_propose`), then propose what waited for a
        leader."""
        self.reported = reported
        self.recovered = first - 1
        self.recover_to = last
        self.next_slot = last + 1
        # A change chosen before we led and not yet in force: fill to it, as its
        # proposer would have.
        self.fill_to = self.log.membership.latest.start - 1
        self.prepared_at = {}
        self.progress = {}
        self.promoting = set()
        self.queue.extend(self.unrouted)
        self.unrouted.clear()
        changes, self.unrouted_changes = self.unrouted_changes, []
        for change in changes:
            self.queue_change(change, now)
        self.fill_window(now)

    def on_promise(self, src: int, entries: tuple[Entry, ...], now: float) -> None:
        """A promise for our ballot arrived after we lead (a voter of a configuration
        we had no quorum of, asked by `ask_promises`): what it reports for slots not
        yet recovered counts."""
        # A slot already proposed had a phase-1 quorum of its configuration then: what
        # this promise says of it changes nothing. Unproposed: recovery's rest, and
        # every slot from `next_slot` on.
        for e in sorted(entries, key=lambda e: e.slot):
            slot = e.slot
            if self.recovered < slot <= self.recover_to:
                self.reported.setdefault(slot, []).append(e)
            elif slot >= self.next_slot:
                if self.recovered == self.recover_to:
                    self.recovered = self.next_slot - 1  # fresh slots below: proposed
                self.reported.setdefault(slot, []).append(e)
                self.recover_to = slot
                self.next_slot = slot + 1
        self.fill_window(now)

    def may_propose(self, slot: int, now: float) -> bool:
        """Whether the leader may propose in `slot`: its configuration is known (every
        slot up to slot - ALPHA is chosen) and we hold promises from a phase-1 quorum
        of it (else we ask its voters we lack: `ask_promises`)."""
        log = self.log
        if slot > log.commit + ALPHA:
            return False
        membership = log.membership
        config = membership.at(slot)
        promised = self.election.promised_by
        if membership.quorums(config).is_phase1_quorum(promised):
            return True
        self.ask_promises(voters_of(config), now)
        return False

    def ask_promises(self, voters: tuple[int, ...], now: float) -> None:
        election = self.election
        interval = self.config.heartbeat_interval
        for v in voters:
            if v in election.promised_by or now - self.prepared_at.get(v, -interval) < interval:
                continue
            self.prepared_at[v] = now
            self.out.send(v, Prepare(self.node_id, election.ballot, election.first))

    def recover(self, now: float) -> None:
        """Propose the slots phase 1 reported, in order, as far as `may_propose` allows."""
        log = self.log
        while self.recovered < self.recover_to:
            slot = self.recovered + 1
            if slot not in log.chosen and slot > log.floor:
                if not self.may_propose(slot, now):
                    return
                self.propose(slot, self.election.pick_value(self.reported.pop(slot, ())), now)
            else:
                self.reported.pop(slot, None)
            self.recovered = slot

    def fill_window(self, now: float) -> None:
        cfg = self.config
        queue = self.queue
        election = self.election
        if election.role is not Role.LEADER:
            return
        if self.recovered < self.recover_to:
            self.recover(now)
            if self.recovered < self.recover_to:
                return  # fresh slots come after every recovered one
        window = min(cfg.window, ALPHA)
        changes = self.change_queue
        while (changes and len(self.inflight) < window
               and self.may_propose(self.next_slot, now)):
            slot = self.next_slot
            self.next_slot += 1
            self.propose(slot, Batch((), changes.popleft()), now)
        while queue and len(self.inflight) < window and self.may_propose(self.next_slot, now):
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
        while (self.next_slot <= self.fill_to and len(self.inflight) < window
               and self.may_propose(self.next_slot, now)):
            slot = self.next_slot
            self.next_slot += 1
            self.propose(slot, NOOP, now)

    def propose(self, slot: int, value: Batch, now: float) -> None:
        ballot = self.election.ballot
        log = self.log
        commit = log.commit
        membership = log.membership
        quorums = membership.quorums(membership.at(slot))
        self.inflight[slot] = InFlight(value, ballot, quorums, now)
        self.told_commit = commit
        self.out.broadcast(Accept(self.node_id, ballot, slot, value, commit), include_self=True)

    def on_accepted(self, m: Accepted, now: float) -> None:
        if self.election.role is not Role.LEADER:
            return
        proposal = self.inflight.get(m.slot)
        if proposal is None or not proposal.accepted(m.src, m.ballot):
            return
        del self.inflight[m.slot]
        # A quorum accepted in our ballot since we sent the Accept: as good as a
        # heartbeat round's acks for knowing we are not cut off (`Election.tick`).
        self.election.quorum_seen_at = now
        log = self.log
        log.learn(m.slot, proposal.value, proposal.ballot)
        log.apply_chosen()
        self.fill_window(now)
        if log.commit > self.told_commit:
            # No Accept is going out to carry the news: tell the followers now, so a
            # client waiting at one of them hears without waiting for the heartbeat.
            self.election.announce_commit(now)

    def close_orphans(self, accepted: int, now: float) -> None:
        """An acker accepted up to slot `accepted`, beyond ours: a slot accepted in an
        older ballot by someone outside our phase-1 quorum, so it cannot have been
        chosen. Close it with no-ops rather than leave quorum reads waiting for it
        until the next write."""
        if (accepted >= self.next_slot and accepted < self.next_slot + self.config.window
                and self.recovered >= self.recover_to):
            for slot in range(self.next_slot, accepted + 1):
                if not self.may_propose(slot, now):
                    return
                self.propose(slot, NOOP, now)
                self.next_slot = slot + 1

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
            for member in self.out.members:
                if member not in proposal.voters:
                    self.out.send(member, accept)

    def lose_ballot(self) -> None:
        """We lost our ballot: fail fast every command we had not got chosen."""
        lost: dict[int, list[int]] = {}
        for proposal in self.inflight.values():
            for c in proposal.value.commands:
                lost.setdefault(c.origin, []).append(c.id)
            if proposal.value.change is not None:
                change = proposal.value.change
                lost.setdefault(change.origin, []).append(change.id)
        for c in self.queue:
            lost.setdefault(c.origin, []).append(c.id)
        for change in self.change_queue:
            lost.setdefault(change.origin, []).append(change.id)
        self.inflight.clear()
        self.queue.clear()
        self.change_queue.clear()
        self.reported = {}
        self.recovered = self.recover_to = self.fill_to = 0
        self.promoting = set()
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
        assert leading or not (self.inflight or self.queue or self.change_queue), (
            "proposals without leading")
        if leading:
            ballot = self.election.ballot
            commit = self.log.commit
            for slot, proposal in self.inflight.items():
                assert 1 <= slot < self.next_slot, (slot, self.next_slot)
                assert slot <= commit + ALPHA, (slot, commit)
                assert proposal.ballot == ballot, (slot, proposal.ballot, ballot)
                assert slot not in self.log.chosen, slot
        assert len(self.forwarded) <= len(self.waiting), "forwarded is not within waiting"

"""Multi-Paxos: the replicated log, one instance of Paxos per slot.

Import from this package, not from its modules: `Replica` (the facade a
driver feeds with events), `ReplicaConfig`, `LogReady` (the effects of one
event), `Outcome`/`Code` (what became of a request) and the read modes.

Units (each owns its state and states its invariants; `Replica.check_invariants`
asserts them all):

    replica.py   the facade: events in, `LogReady` out; dispatch by message type
    acceptor.py  promised / accepted for every slot (the seed's acceptor rules)
    election.py  pre-vote, phase 1, leader, heartbeats, step-down, follow
    pipeline.py  routing, the leader's queue, batches, window, votes in flight
    log.py       chosen, commit, apply in order, catch-up; `Votes` (learner rule);
                 snapshots taken, the log compacted below them, one installed
    reads.py     read index and quorum reads
    transfer.py  a snapshot fetched from a peer in chunks, resumable; holds on it
    standing.py  whether this replica votes: an empty disk asks every member first
    membership.py which members vote on which slots; changed by a value in the log
    effects.py   the outbox: persist-before-send (`DurabilityGate`), snapshot ops

The golden scenarios in `tests/scenarios/*.txt` print every message of these
paths; below, `b` is the leader's ballot, `*` a record made durable before the
message under it leaves (persist-before-send).

Normal case (a client at a follower; `window` slots in flight at once)::

    client        F=2                   L=1                     3
      |  submit    |                     |                      |
      |----------->|  Forward(cmds)      |                      |
      |            |-------------------->| queue -> batch -> slot s
      |            |<--Accept(b,s,v,c)---|--Accept(b,s,v,c)---->|  (and to itself)
      |            | *AcceptRecord       |    *AcceptRecord     |
      |            |---Accepted(b,s)---->|<---Accepted(b,s)-----|
      |            |                     | Votes: phase-2 quorum in ONE ballot b
      |            |                     | -> chosen(s), commit, apply in order
      |            |<-Accept(b,s+1,commit=s) or Heartbeat(b,commit=s)-->|
      |            | learn_commit: s accepted in b -> chosen, apply
      |            | (that Heartbeat is round 0, `announce_commit`: nobody acks it)
      |<-----------| outcome (the origin answers once it applied the command)

Snapshots, compaction and a laggard (`snapshot_every` commands per snapshot;
`snapshot_tail` commands kept below it; the numbers are slots, one command each)::

      leader L                                   laggard F (at slot 40)
      applies 1..1000: TakeSnapshot(1000)  (machine captured copy-on-write,
        written off the loop)  -> snapshotted(1000)
      Log.compact: forget 1..500 (tail 500),
        *CompactRecord(500); Promise.compacted=500
                        <------------- CatchUp(41)
      41 <= compacted: SnapshotOffer(1000) --------------->
                        <------------- SnapshotRequest(1000, offset 0)
      holds 1000 (no compaction above it, file kept)
      SnapshotChunk(1000, 0, data, crc) ------------------> StageChunk ... staged
                        <------------- SnapshotRequest(1000, offset n) ...
                                                    InstallSnapshot -> restore ->
                                                    Log.install(1000): floor=applied=1000
                        <------------- CatchUp(1001)
      Chosen(1001..) ------------------------------------> apply in order

Membership change (Lamport's rule: a configuration chosen in slot i governs
from i + ALPHA; ALPHA = 64; every quorum counts the voters of the slot's
configuration; see `membership.py` for why this rule)::

    client      L=1 (voters 1,2,3)                          4 (new, empty)
      |--add 4-->| Change(+4 learner, promote) in slot i      | pnyx serve --join
      |          |---Accept(b,i,change)---> 1,2,3 (and 4)     |
      |          | chosen: applied in slot order on every replica: C1 = C0 + 4 (learner)
      |<--ok-----| governs from i+64; idle slots i+1..i+63 filled with no-ops
      |          |---Heartbeat / Accept----------------------->| CatchUp, snapshot
      |          |<--HeartbeatAck(applied)---------------------| (counts in no quorum)
      |          | applied >= commit - 64: caught up
      |          | Change(promote 4) in slot j: from j+64, voters 1,2,3,4
      (a new leader recovers 64 slots at a time, and asks the voters of each
       configuration it reaches for their promise if it has no quorum of them)

A candidate whose phase 1 starts at or below some acceptor's `compacted`
cannot recover those slots by phase 1 (their entries are gone): it catches up
first (`Election.on_promise`). A replica that lost its disk never votes again
(`standing.Standings`).

Election with pre-vote, phase 1 for all slots (the seed's example: node 1
knows slots 1-134, 138 and 139 chosen)::

      1                                 2                            3
      | election timeout: PRE_CANDIDATE |                            |
      |---PreVote(b)------------------->|--------------------------->|
      |<--PreVoteReply(granted)---------|  (only if it misses the leader too)
      | phase-1 quorum: CANDIDATE, *RoundRecord(b.round)
      |---Prepare(b, first=135, known=(138,139))---> 1, 2, 3
      |<--Promise(b,[135@a,137@c,140@e])  *PromiseRecord
      |<--Promise(b,[135@a',141@f])-------------------- *PromiseRecord
      | phase-1 quorum: LEADER. Per slot the highest-numbered value reported,
      | else a no-op: 135<-a' (higher ballot), 136<-no-op, 137<-c, 140<-e, 141<-f
      |---Accept(b,135..141 but 138,139)---> all; then as the normal case
      | (a Promise too big for a frame comes in parts; it counts once all are in)

Forward and abort (a leader that loses its ballot fails fast)::

    client        F=2                   L=1                     3
      |----------->|---Forward(c)------->| c queued or in flight
      |            |                     |<--Prepare(b') / Rejected(b') / Heartbeat(b')
      |            |                     | b' > b: step_down, lose_ballot
      |            |<--Aborted(ids)------|
      |<-----------| ABORTED, unknown: retry under the same request id (dedup)
      (F following a new leader aborts what it forwarded to the old one too.)

Catch-up (a replica that missed Accepts cannot learn from `commit` alone)::

      F=3                                L=1
      |<--Heartbeat(b, commit=c)----------|
      | c beyond what it accepted in b    |
      |---CatchUp(first=commit+1)-------->|
      |<--Chosen([(s,v)...], commit)------|  at most catchup_chunk slots / catchup_bytes
      | learn (a known chosen slot is never overwritten), apply in order;
      | still behind: CatchUp again

Read index (linearizable read at a follower)::

    client        F=2                   L=1                     3
      |--read----->|---ReadIndex(id)---->| waits for the next heartbeat round
      |            |<--Heartbeat(b,r)----|---Heartbeat(b,r)---->|
      |            |---HeartbeatAck(r)-->|<--HeartbeatAck(r)----|
      |            |                     | quorum acked r, commit >= recovered_at
      |            |<--ReadIndexReply(id, max(commit at r, recovered_at))
      |            | wait until applied >= index, then query the machine
      |<--result---|

Of three voters, F and L are a quorum. ReadIndex carries F's promise when it asked
(after the read arrived); if that is L's ballot, still L's own promise, the two stand
for a round's acks, and L (commit >= recovered_at) replies at once, with no round
(`Reads.on_read_index`)::

    client        F=2                   L=1
      |--read----->|--ReadIndex(id, promised=b)-->|
      |            |<--ReadIndexReply(id, commit)--|

Leader lease (opt-in, `ReplicaConfig.read_lease`; `Election.has_lease`): members
keep a guard (no promise to another ballot, no candidacy, for an election timeout
after they last heard the leader) and say so in their acks; a round a quorum of
them acked holds the lease from its send time s::

    client        L=1                   F=2 (guarding)           3
      |            |---Heartbeat(b,r) at s->|                    |
      |            |<--HeartbeatAck(r, lease)| no promise to others before heard_at + timeout
      |--read----->| now < s + read_lease, commit >= recovered_at: answered at once
      |<--result---|  (a follower's ReadIndex too, of any cluster size)

Quorum read (the seed's read as a learner, made linearizable)::

    client        R=2                   1                       3
      |--read----->|---QuorumRead(id,q,min_applied=0)---> all (and itself)
      |            |<--QuorumReadReply(applied, accepted, result, index)-- each
      |            | read_quorum replies: read slot = highest accepted among them
      |            | read_quorum agreeing replies with applied >= read slot: answer
      |            | else rinse: QuorumRead(min_applied=read slot), answered once applied

The seed (`paxos-notes.md`), rule by rule: where it is obeyed, what proves it
(tests are in `tests/`, file::name)::

  Read as a learner: ask all, take the majority's value, else fail
    reads.Reads.add (mode "quorum"), Reads.evaluate_quorum_read
    test_replica_reads::test_a_quorum_read_waits_for_a_quorum_that_has_applied_the_highest_accepted_slot
    test_replica_reads::test_a_replica_holds_a_quorum_read_until_it_has_applied_min_applied
  Write requests may go to any member
    pipeline.Pipeline.route, Pipeline.on_forward, election.Election.want_leader
    test_seed_multipaxos::test_a_follower_forwards_a_command_to_the_leader_and_answers_once_it_applies_it
    test_seed_multipaxos::test_with_no_leader_known_a_follower_given_a_command_starts_the_election_itself
  Prepare carries a sequence number that orders newer and older proposals
    pnyx.protocol.ballot.Ballot, acceptor.Acceptor.next_ballot, Acceptor.use_round
    test_seed_basic_paxos::test_ballots_are_totally_ordered_round_first_then_node_id
    test_replica::test_a_restarted_replica_never_reuses_a_ballot_round_nobody_else_saw
  Check one: promise only a sequence number higher than any seen
    acceptor.Acceptor.on_prepare (synod.acceptor.may_promise)
    test_seed_basic_paxos::test_acceptor_refuses_prepare_at_or_below_its_promise
    test_seed_multipaxos::test_a_leader_that_sees_a_higher_ballot_in_a_prepare_steps_down
  Safety 1: only one value can be chosen
    log.Votes.accepted (one ballot's quorum), log.Log.learn (never overwrites)
    test_seed_multipaxos::test_a_leader_reelected_with_a_higher_ballot_ignores_accepted_of_its_older_ballot
    test_seed_multipaxos::test_a_catch_up_never_overwrites_a_slot_already_known_chosen
    test_cluster_sim::test_store_stays_linearizable_and_loses_nothing_under_all_faults
  Safety 2: the chosen value must be proposed
    election.Election.pick_value (a reported value or a no-op), Pipeline.fill_window
    test_seed_basic_paxos::test_every_learned_value_was_accepted_by_a_quorum_in_one_ballot
    test_seed_multipaxos::test_slots_are_applied_strictly_in_order_and_once_however_messages_arrive
  Safety 3: never learn a value chosen unless it is
    log.Log.learn_commit (only entries accepted in the leader's ballot), Log.on_chosen
    test_seed_multipaxos::test_a_follower_never_takes_its_own_value_from_an_older_ballot_as_chosen
    test_seed_multipaxos::test_a_follower_never_learns_from_commit_a_value_that_was_not_chosen
  An acceptor must accept the first proposal it receives
    acceptor.Acceptor.on_accept (synod.acceptor.may_accept: ballot >= promised)
    test_seed_basic_paxos::test_acceptor_accepts_first_proposal_it_receives
    test_seed_multipaxos::test_after_the_election_further_slots_need_only_accepts
  P2c: a majority S none of which accepted below n, or v is the highest-numbered
  value accepted below n in S
    Election.become_leader + Election.pick_value per slot, over a phase-1 quorum
    (pnyx.protocol.quorum: every phase-1 quorum meets every phase-2 quorum)
    test_seed_multipaxos::test_slot_accepted_only_in_a_lower_ballot_by_the_leader_itself_loses_to_a_higher_one
    test_quorum::test_every_phase1_quorum_intersects_every_phase2_quorum
  Learners; distinguished learners inform the others
    the leader learns (Pipeline.on_accepted, Votes) and tells `commit`
    (Log.learn_commit); a replica that lacks values asks (Log.catch_up/on_catch_up)
    test_seed_multipaxos::test_followers_learn_the_commit_point_from_the_next_accept
    test_seed_multipaxos::test_followers_learn_the_commit_point_from_a_heartbeat
    test_seed_multipaxos::test_a_follower_that_missed_the_accepts_catches_up_in_chunks
  Liveness: duelling proposers; a distinguished proposer
    election.Election (one leader; heartbeats; pre-vote so a returning replica
    does not depose it)
    test_liveness::test_dueling_proposers_without_backoff_livelock
    test_liveness::test_a_distinguished_proposer_resolves_the_duel_even_without_backoff
    test_seed_multipaxos::test_a_replica_is_a_pre_candidate_until_a_quorum_grants_its_prevote
    test_seed_multipaxos::test_with_prevote_a_replica_that_hears_a_healthy_leader_refuses_a_prevote
    test_seed_multipaxos::test_prevote_keeps_a_flapping_replica_from_deposing_the_leader_in_the_simulator
  FLP: electing a proposer needs randomness or real time
    Election.election_wait (randomized timeouts), Election.tick
    test_seed_multipaxos::test_election_timeouts_are_randomized_and_the_first_to_expire_becomes_the_leader
    test_liveness::test_randomized_backoff_resolves_the_duel
  Phase 1: prepare n; promise never to accept below n, report the highest
  accepted proposal
    Election.start_phase1, Acceptor.on_prepare, Election.on_promise
    test_replica::test_promise_leaves_only_after_the_promise_is_durable
    test_seed_multipaxos::test_an_acceptor_with_more_accepted_than_one_message_holds_promises_in_parts
    test_seed_multipaxos::test_a_promise_missing_a_part_does_not_count
  Phase 1 result: v = the highest-numbered value reported, else any value
    Election.pick_value (synod.proposer.highest_numbered; no-op for "any")
    test_seed_multipaxos::test_new_leader_prepares_135_to_137_and_above_139_at_once_then_fills_every_gap
  Phase 2: with a majority of promises, send accept(n, v)
    Election.become_leader -> Pipeline.propose
    test_seed_multipaxos::test_after_the_election_further_slots_need_only_accepts
  Accept rule: accept unless a prepare above n was answered
    Acceptor.on_accept (may_accept); a refusal says why (Rejected) and the
    proposer steps down (Election.on_rejected)
    test_seed_basic_paxos::test_acceptor_refuses_accept_below_its_promise
    test_seed_multipaxos::test_a_leader_that_is_rejected_for_a_higher_ballot_steps_down
  Multi-Paxos: a sequence of instances, the i-th chosen value is the i-th command
    one accepted entry per slot (Acceptor.accepted), Log.apply_chosen in slot order
    test_seed_multipaxos::test_slots_are_applied_strictly_in_order_and_once_however_messages_arrive
  The leader is the distinguished proposer and the only learner
    Pipeline.on_accepted counts votes only at the LEADER; a leader never learns
    from Chosen (Log.on_chosen)
    test_seed_multipaxos::test_a_follower_forwards_a_command_to_the_leader_and_answers_once_it_applies_it
    test_seed_multipaxos::test_a_leader_reelected_with_a_higher_ballot_ignores_accepted_of_its_older_ballot
  Knows 1-134, 138, 139: phase 1 for 135-137 and all above 139
    Election.start_phase1 (first, known = Log.chosen_beyond_commit),
    Acceptor.on_prepare, Election.become_leader
    test_seed_multipaxos::test_new_leader_prepares_135_to_137_and_above_139_at_once_then_fills_every_gap
    test_scenarios::test_scenario[phase1_gaps_135_137]
  Propose 142 before learning that 141 is chosen
    Pipeline.fill_window (up to `window` slots in flight)
    test_seed_multipaxos::test_leader_proposes_142_before_it_learns_141_is_chosen
    test_seed_multipaxos::test_with_window_1_the_leader_waits_for_141_before_proposing_142

Beyond the seed (the log's long life):

  A snapshot replaces a prefix of the log; compaction forgets it only once durable
    log.Log.compact (why it is safe, in its docstring), acceptor.Acceptor.forget
    test_cluster_sim::test_compaction_before_the_snapshot_is_durable_is_caught_by_a_restart_alone
  A replica that lost its disk rejoins as a learner, through a snapshot
    standing.Standings.on_probe_reply, transfer.Transfer.on_offer, log.Log.install
    test_cluster_sim::test_a_wiped_replica_rejoins_as_a_learner_through_a_snapshot
  The set of servers is part of the state: a configuration chosen in slot i
  governs from i + alpha (Paxos Made Simple, section 3)
    membership.Membership.apply, pipeline.Pipeline.may_propose, Pipeline.recover
    (tests: tests/test_membership_protocol.py, tests/test_membership_sim.py)
"""

from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import LogReady
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.log import Machine
from pnyx.protocol.multipaxos.membership import ALPHA, Config, Member
from pnyx.protocol.multipaxos.outcome import READ_MODES, Code, Outcome, ReadMode
from pnyx.protocol.multipaxos.replica import Replica

__all__ = [
    "ALPHA", "READ_MODES", "Code", "Config", "LogReady", "Machine", "Member", "Outcome",
    "ReadMode", "Replica", "ReplicaConfig", "Role",
]

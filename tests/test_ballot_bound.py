"""No ballot can wedge the protocol (issue 11, item 5): the rule of `ballot.sight`.

A peer's ballot more than MAX_ROUND_STEP rounds above the receiver's floor is
refused: a member's forged ballot at the largest round the wire allows is never
promised, accepted or followed, so the cluster keeps choosing values; and honest
replicas whose rounds drifted further apart than the step (a partition without
pre-vote, a replica away while the others ran elections) still come together.
The Multi-Paxos scenarios use the hand-driven `harness.Net`; the simulator sweep
forges such a ballot into every replica of a whole faulty run.
"""

from __future__ import annotations

import random

import pytest

from harness import Net, batch, touching
from pnyx.protocol import ballot as ballot_rule
from pnyx.protocol.ballot import MAX_ROUND, MAX_ROUND_STEP, Ballot, sight
from pnyx.protocol.multipaxos import LogReady, Replica
from pnyx.protocol.multipaxos.acceptor import Acceptor
from pnyx.protocol.multipaxos.messages import (
    Accept,
    Heartbeat,
    LogMessage,
    Prepare,
    Rejected,
    decode,
    encode,
)
from pnyx.protocol.multipaxos.records import ReplicaDurable
from pnyx.protocol.synod import (
    Message,
    Ready,
    SynodConfig,
    SynodNode,
)
from pnyx.protocol.synod import messages as synod
from pnyx.sim.cluster import ClusterConfig, simulate_cluster
from pnyx.sim.faults import FaultConfig
from pnyx.sim.network import NetworkConfig

TOP = Ballot(MAX_ROUND, 2)  # the largest ballot member 2 can put on the wire
FAR = 2**24  # far below MAX_ROUND: every round in these tests stays below it

# ------------------------------------------------------------------ the rule


def test_the_step_is_2_to_the_16() -> None:
    assert MAX_ROUND_STEP == 2**16


def test_a_ballot_within_the_step_is_admitted_and_becomes_the_highest_seen() -> None:
    seen, admitted = sight(Ballot(10, 1), 0, Ballot(10 + 2**16, 2))
    assert admitted and seen == Ballot(10 + 2**16, 2)


def test_a_ballot_beyond_the_step_is_refused_and_only_lifts_the_floor_by_less_than_the_step(
) -> None:
    seen, admitted = sight(Ballot(10, 1), 0, Ballot(11 + 2**16, 2))
    assert not admitted
    assert seen == Ballot(10 + 2**16 - 1, 0)
    # ... so the receiver's next ballot is the highest one a peer at its old floor admits.
    assert sight(Ballot(10, 3), 0, seen.successor(1))[1]


def test_the_floor_is_also_the_receivers_own_last_round() -> None:
    assert sight(Ballot(0, 0), 5 * 2**16, Ballot(6 * 2**16, 2))[1]
    assert not sight(Ballot(0, 0), 0, Ballot(6 * 2**16, 2))[1]


def test_an_attacker_needs_about_2_to_the_46_messages_to_climb_to_the_wire_limit() -> None:
    """Each admitted ballot lifts a floor by at most the step, each refused one by
    less: reaching MAX_ROUND from 0 takes MAX_ROUND / MAX_ROUND_STEP messages."""
    assert MAX_ROUND // MAX_ROUND_STEP == 2**46
    seen, floor = Ballot(0, 0), 0
    for _ in range(1000):
        seen, _ = sight(seen, floor, TOP)
    assert seen.round < 1000 * MAX_ROUND_STEP


# ------------------------------------------------- forged ballots, Multi-Paxos


def forged(kind: str, net: Net, dst: int) -> LogMessage:
    """What member 2 sends `dst` with the largest ballot on the wire (decoded from
    bytes, as a peer's message would be)."""
    node = net.nodes[dst]
    m: LogMessage
    if kind == "prepare":
        m = Prepare(2, TOP, node.commit + 1)
    elif kind == "accept":
        m = Accept(2, TOP, node.commit + 1, batch(b"evil=1"), 0)
    elif kind == "heartbeat":
        m = Heartbeat(2, TOP, node.commit, 1)
    else:  # the reply to what `dst` last asked of member 2, as if it had promised TOP
        m = Rejected(2, node.ballot if node.ballot.round else node.leader_ballot, TOP)
    return decode(encode(m))


def run_until_chosen(net: Net, origin: int, payload: bytes, request_id: int,
                     cut_off: int | None = None, seconds: float = 2.0) -> float:
    """Submit at `origin` (again, as a client would, if an attempt fails) and let time
    run, elections included, until it is applied everywhere but at `cut_off` (whose
    messages are all lost); fail if `seconds` of protocol time do not do. Returns
    how much protocol time it took."""
    cut = None if cut_off is None else touching(cut_off)
    live = [i for i in net.nodes if i != cut_off]
    attempt = request_id
    net.submit(origin, attempt, payload)
    start = net.now
    while net.now - start < seconds:
        net.settle(1, cut)
        if all(any(c.payload == payload for b in net.values[i].values() for c in b.commands)
               for i in live):
            return net.now - start
        outcome = net.outcomes[origin].get(attempt)
        if outcome is not None and not outcome.ok:
            attempt += 1000
            net.submit(origin, attempt, payload)
    pytest.fail(f"{payload!r} was never chosen: leaders {net.leaders()}, "
                f"promised {[str(n.promised) for n in net.nodes.values()]}")


KINDS = ["prepare", "accept", "heartbeat", "rejected"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_forged_highest_ballot_from_a_member_does_not_wedge_a_three_node_cluster(
    kind: str,
) -> None:
    net = Net(prevote=False)
    net.elect(1)
    run_until_chosen(net, 1, b"a=1", 1)
    for dst in (1, 3):
        net.step(dst, forged(kind, net, dst))
    run_until_chosen(net, 3, b"b=2", 2)
    for node in net.nodes.values():
        assert node.promised.round < FAR, node.promised
        assert not any(b == batch(b"evil=1") for b in node.chosen.values())
    assert sum(net.nodes[i].acceptor.refused for i in (1, 3)) == 2
    # The promise is on disk too: a restart of every node does not change it.
    for i in net.nodes:
        net.restart(i, rng_seed=i)
    net.now += 1.0
    run_until_chosen(net, 2, b"c=3", 3)


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_of_forged_highest_ballots_at_every_replica_does_not_wedge_it(kind: str) -> None:
    net = Net()
    net.elect(2)
    for _ in range(50):
        for dst in net.nodes:
            net.step(dst, forged(kind, net, dst))
        net.tick(dt=0.001)
    run_until_chosen(net, 1, b"a=1", 1)
    assert all(n.highest_seen.round < FAR for n in net.nodes.values())


def test_a_forged_highest_ballot_never_reaches_the_disk() -> None:
    net = Net()
    net.elect(1)
    for kind in KINDS:
        for dst in net.nodes:
            net.step(dst, forged(kind, net, dst))
    for disk in net.disks.values():
        assert disk.promised.round < FAR
        assert all(e.ballot.round < FAR for e in disk.accepted.values())


# ------------------------------------------ honest replicas further apart than the step


def test_a_partitioned_replica_that_ran_many_elections_without_prevote_rejoins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without pre-vote a replica cut off from the others runs an election at every
    timeout; after 200 of them it is more than 10 times the (shrunk) step ahead.
    Healed, it is caught up with, and the cluster chooses with its votes."""
    monkeypatch.setattr(ballot_rule, "MAX_ROUND_STEP", 16)
    net = Net(prevote=False)
    net.elect(1)
    run_until_chosen(net, 1, b"a=1", 1)

    def cut(dst: int, m: LogMessage) -> bool:  # 3 hears itself, and nothing else
        return 3 in (dst, m.src) and dst != m.src

    while net.nodes[3].last_round < 200:
        net.settle(1, cut)
    assert net.nodes[3].promised.round == net.nodes[3].last_round
    assert net.nodes[3].last_round - net.nodes[1].promised.round > 10 * 16
    took = run_until_chosen(net, 1, b"b=2", 2, seconds=10.0)  # healed
    print(f"caught up with a replica 200 rounds ahead (step 16) in {took:.2f} s")
    assert sum(n.acceptor.refused for n in net.nodes.values()) > 0  # the rule was at work
    run_until_chosen(net, 2, b"c=3", 3, cut_off=1)  # needs 3's votes
    assert net.values[3] == net.values[2]


def test_a_replica_restarted_far_ahead_of_the_others_rejoins() -> None:
    """Replica 3's disk says it used rounds three steps beyond the others (a long
    partition without pre-vote); the real step."""
    ahead = 3 * 2**16 + 5
    net = Net(prevote=False, durable={3: ReplicaDurable(Ballot(ahead, 3), ahead)})
    took = run_until_chosen(net, 1, b"a=1", 1, seconds=10.0)
    print(f"caught up with a replica 3 steps ahead in {took:.2f} s")
    run_until_chosen(net, 2, b"b=2", 2, cut_off=1)  # needs 3's votes
    assert net.values[3] == net.values[2]
    assert all(n.promised.round > ahead for n in net.nodes.values() if n.node_id != 1)


@pytest.mark.parametrize("prevote", [True, False])
def test_a_replica_far_behind_the_others_follows_the_leader_again(prevote: bool) -> None:
    """Replicas 1 and 2 ran three steps' worth of elections while 3 was away."""
    behind = 3 * 2**16 + 5
    disks = {i: ReplicaDurable(Ballot(behind, 2), behind) for i in (1, 2)}
    net = Net(prevote=prevote, durable=disks)
    net.elect(1)
    assert net.nodes[1].ballot.round > behind
    took = run_until_chosen(net, 1, b"a=1", 1)
    print(f"a replica 3 steps behind follows again after {took:.2f} s")
    assert net.nodes[3].leader == 1
    run_until_chosen(net, 1, b"b=2", 2, cut_off=2)  # needs 3's votes
    assert net.values[3] == net.values[1]


# ------------------------------------------------------------------ the Synod


class SynodNet:
    """Three `SynodNode`s, every record durable at once, messages delivered in order."""

    def __init__(self) -> None:
        cfg = SynodConfig.majority((1, 2, 3))
        self.nodes = {i: SynodNode(i, cfg, random.Random(i)) for i in (1, 2, 3)}
        self.queue: list[tuple[int, Message]] = []
        self.now = 0.0

    def obey(self, i: int, ready: Ready) -> None:
        self.queue += ready.send
        if ready.persist is not None:
            self.queue += self.nodes[i].persisted(ready.persist_seq).send

    def run(self, steps: int = 2000) -> None:
        for _ in range(steps):
            if self.queue:
                dst, m = self.queue.pop(0)
                self.obey(dst, self.nodes[dst].receive(synod.encode(m), self.now))
            else:
                self.now += 0.01
                for i, node in self.nodes.items():
                    self.obey(i, node.tick(self.now))


@pytest.mark.parametrize("kind", ["prepare", "accept", "rejected"])
def test_a_forged_highest_ballot_does_not_keep_the_synod_from_choosing(kind: str) -> None:
    net = SynodNet()
    for dst in (1, 3):
        m: Message
        if kind == "prepare":
            m = synod.Prepare(2, TOP)
        elif kind == "accept":
            m = synod.Accept(2, TOP, b"evil")
        else:
            m = synod.Rejected(2, Ballot(1, dst), TOP)
        net.obey(dst, net.nodes[dst].receive(synod.encode(m), 0.0))
    net.obey(1, net.nodes[1].propose(b"v", 0.0))
    net.run()
    assert [n.chosen for n in net.nodes.values()] == [b"v"] * 3
    assert all(n.durable_state().promised.round < FAR for n in net.nodes.values())


# ------------------------------------------------------------------ the simulator


def _merge(first: LogReady, then: LogReady) -> LogReady:
    return LogReady(first.persist + then.persist, max(first.persist_seq, then.persist_seq),
                    first.send + then.send, first.outcomes + then.outcomes,
                    first.applied + then.applied, first.snapshots + then.snapshots,
                    then.installed or first.installed, wake_at=then.wake_at)


@pytest.mark.parametrize("prevote", [True, False])
def test_simulated_kv_runs_with_a_forged_highest_ballot_at_every_replica_stay_live_and_safe(
    monkeypatch: pytest.MonkeyPatch, prevote: bool
) -> None:
    """Every replica is handed one forged message with the largest ballot (each kind in
    turn), from another member, in the middle of a run with partitions, crashes and a
    lossy network; the store must still finish its workload, linearizable, and every
    message it sends must still decode at its peers."""
    step = Replica.step
    forged_at: dict[tuple[int, int], float] = {}
    kinds = iter(KINDS * 1000)

    def forging_step(self: Replica, m: LogMessage, now: float) -> LogReady:
        ready = forge(self, m, now)
        for _, sent in ready.send:  # the simulator does not encode: the wire would
            decode(encode(sent))
        return ready

    def forge(self: Replica, m: LogMessage, now: float) -> LogReady:
        key = (id(self), self.node_id)
        if now < 0.3 or key in forged_at:
            return step(self, m, now)
        forged_at[key] = now
        src = next(i for i in self.config.members if i != self.node_id)
        kind = next(kinds)
        bad: LogMessage
        if kind == "prepare":
            bad = Prepare(src, Ballot(MAX_ROUND, src), self.commit + 1)
        elif kind == "accept":
            bad = Accept(src, Ballot(MAX_ROUND, src), self.commit + 1, batch(b"evil"), 0)
        elif kind == "heartbeat":
            bad = Heartbeat(src, Ballot(MAX_ROUND, src), self.commit, 1)
        else:
            bad = Rejected(src, self.ballot, Ballot(MAX_ROUND, src))
        return _merge(step(self, bad, now), step(self, m, now))

    monkeypatch.setattr(Replica, "step", forging_step)
    faults = FaultConfig(partitions=True, crashes=True, until=2.0, partition_rate=2.0,
                         crash_rate=3.0, max_outage=0.3)
    for seed in range(12):
        result = simulate_cluster(ClusterConfig(
            seed=seed, network=NetworkConfig(drop=0.1, duplicate=0.05), faults=faults,
            prevote=prevote, max_time=30.0))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
    assert len(forged_at) >= 12 * 3


def test_simulated_kv_runs_with_a_small_step_and_no_prevote_stay_live_and_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the step shrunk to 2 rounds, replicas cut off for up to a second without
    pre-vote run further ahead than the step, and the rule's catching up is what
    brings them back."""
    monkeypatch.setattr(ballot_rule, "MAX_ROUND_STEP", 2)
    refused = [0]
    observe = Acceptor.observe

    def counting(self: Acceptor, ballot: Ballot) -> bool:
        admitted = observe(self, ballot)
        refused[0] += not admitted
        return admitted

    monkeypatch.setattr(Acceptor, "observe", counting)
    faults = FaultConfig(partitions=True, crashes=True, until=3.0, partition_rate=2.0,
                         crash_rate=3.0, max_outage=1.0)
    for seed in range(15):
        result = simulate_cluster(ClusterConfig(
            seed=seed, network=NetworkConfig(drop=0.1, duplicate=0.05), faults=faults,
            prevote=False, max_time=30.0))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
    assert refused[0] > 20, refused

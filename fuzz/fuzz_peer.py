"""Fuzz the peer port's reading path, as a node reads a connection from another member.

Bytes → `node.transport._Inbound` (the `FrameDecoder`: a Hello first, within
`HELLO_LIMIT`, then frames within the peer limit) → what `node.runtime` does with
a frame (`multipaxos.messages.decode`, the sender check) → a `Replica` of a
3-member cluster stepping the message, with its invariants checked; and every
frame also through the Synod's `decode` into a `SynodNode`.

Allowed outcomes: the connection is refused (`FrameTooLarge`, `FrameError`: a
bad Hello, a frame over the limit), a frame is dropped as `MalformedMessage` or
as from another sender, or a message is stepped. Anything raised is a bug: a
member's message must never crash a node.

Flags (the first byte, see `_harness`): bit 0 puts a valid Hello from member 2
first; bit 1 frames the body's 2-byte-length payloads (so the fuzzer's bytes
reach the message decoders), else the body is the raw stream; bits 2-4 the
chunk size; bit 5 makes the replica a leader with a command in flight first.
Run: `python fuzz/fuzz_peer.py -max_total_time=120` (fuzz/README.md).
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable

from _harness import FakeTransport, frames_of, main, split

from pnyx.node.config import Address
from pnyx.node.transport import Hello, PeerTransport, _encoder, _Inbound, frame
from pnyx.protocol.codec import MalformedMessage
from pnyx.protocol.multipaxos import Replica, ReplicaConfig
from pnyx.protocol.multipaxos.messages import Promise, decode
from pnyx.protocol.synod import SynodConfig, SynodNode

MEMBERS = (1, 2, 3)
CONFIG = ReplicaConfig.majority(MEMBERS)
LEADING = ReplicaConfig.majority(MEMBERS, prevote=False)
SYNOD = SynodConfig.majority(MEMBERS)
HELLO = frame(_encoder.encode(Hello("pnyx", 2)))
PEERS = {i: Address("127.0.0.1", 7000 + i) for i in MEMBERS}
_loop = asyncio.new_event_loop()


class _Machine:
    def apply(self, command: bytes, index: int) -> bytes:
        return command

    def query(self, query: bytes) -> bytes:
        return query

    def snapshot(self) -> bytes:
        return b""


def _frame_handler(replica: Replica, synod: SynodNode) -> Callable[[int, bytes], None]:
    def on_frame(src: int, data: bytes) -> None:
        # As `node.runtime.Runtime._on_frame`: decode, check the sender, step.
        try:
            message = decode(data)
        except MalformedMessage:
            pass  # dropped and counted by the runtime
        else:
            if message.src == src:
                ready = replica.step(message, 1.0)
                replica.persisted(ready.persist_seq)
                replica.check_invariants()
        ready_s = synod.receive(data, 1.0)  # a MalformedMessage is counted inside
        synod.persisted(ready_s.persist_seq)

    return on_frame


def _leader() -> Replica:
    """Replica 1, elected by its own and member 3's promise, one command in flight."""
    replica = Replica(1, LEADING, random.Random(0), _Machine())  # type: ignore[arg-type]
    ready = replica.tick(1.0)  # past the election timeout: phase 1
    pending = ready.send + replica.persisted(ready.persist_seq).send
    while pending:  # its own Prepare, and its own Promise in reply
        dst, m = pending.pop(0)
        if dst == 1:
            ready = replica.step(m, 1.0)
            pending += ready.send + replica.persisted(ready.persist_seq).send
    ready = replica.step(Promise(3, replica.ballot, ()), 1.0)
    replica.persisted(ready.persist_seq)
    assert replica.is_leader
    ready = replica.submit(1, b"x", 1.0)
    replica.persisted(ready.persist_seq)
    return replica


async def _read(flags: int, body: bytes) -> None:
    replica = (_leader() if flags & 0x20
               else Replica(1, CONFIG, random.Random(0), _Machine()))  # type: ignore[arg-type]
    synod = SynodNode(1, SYNOD, random.Random(0))
    on_frame = _frame_handler(replica, synod)
    owner = PeerTransport(1, "pnyx", PEERS, PEERS[1], on_frame)  # type: ignore[arg-type]
    conn = _Inbound(owner)
    transport = FakeTransport()
    conn.connection_made(transport)
    stream = (HELLO if flags & 1 else b"")
    stream += b"".join(frame(p) for p in frames_of(body)) if flags & 2 else body
    for chunk in split(flags, stream):
        conn.data_received(chunk)  # refusals are handled inside: nothing may escape
        if conn.transport is None:
            assert transport.closed and owner.refused == 1
            break
    conn.connection_lost(None)


def one_input(data: bytes) -> None:
    if not data:
        return
    _loop.run_until_complete(_read(data[0], data[1:]))


def seeds() -> list[bytes]:
    """Every message of both families, well-formed, after a Hello (flags 3: framed)."""
    from pnyx.protocol.ballot import Ballot
    from pnyx.protocol.multipaxos import messages as mp
    from pnyx.protocol.synod import messages as sy

    b = Ballot(1, 2)
    batch = mp.Batch((mp.Command(2, 1, b"x"),))
    messages: list[bytes] = [mp.encode(m) for m in (
        mp.Prepare(2, b, 1, (3,)), mp.Promise(2, b, (mp.Entry(1, b, batch),)),
        mp.Accept(2, b, 1, batch, 0), mp.Accepted(2, b, 1), mp.Rejected(2, b, Ballot(2, 3)),
        mp.Heartbeat(2, b, 1, 1), mp.HeartbeatAck(2, b, 1, 1), mp.PreVote(2, b),
        mp.PreVoteReply(2, b, True), mp.CatchUp(2, 1), mp.Chosen(2, (mp.Decided(1, batch),), 1),
        mp.Forward(2, batch.commands), mp.Aborted(2, (1,)),
    )]
    messages += [sy.encode(m) for m in (
        sy.Prepare(2, b), sy.Promise(2, b, sy.Proposal(b, b"v")), sy.Accept(2, b, b"v"),
        sy.Accepted(2, b, b"v"), sy.Rejected(2, b, b), sy.Chosen(2, b"v"), sy.Learned(2),
        sy.Forward(2, b"v"),
    )]
    out = [bytes([flags]) + struct.pack(">H", len(m)) + m
           for m in messages for flags in (3, 0x23)]
    out.append(bytes([1]) + b"".join(frame(m) for m in messages[:4]))
    return out


if __name__ == "__main__":
    main(one_input, seeds())

"""`NodeAPI`: the contract between the HTTP layer and a running node.

The HTTP layer (`pnyx.api.http`) talks to a node only through this protocol,
so it can be served by the real `pnyx.node.Node` or, in tests, by a fake that
applies commands straight to a `KVMachine`. It is a structural
`typing.Protocol`: a node implements it by having these members, without
importing this module.

Commands and queries are the key-value machine's bytes
(`pnyx.statemachine.kv`): the HTTP layer encodes them, the node carries them
through Paxos without looking inside, and the HTTP layer decodes the result.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pnyx.node.metrics import Metrics
from pnyx.protocol.multipaxos import Outcome, ReadMode


@runtime_checkable
class NodeAPI(Protocol):
    # A node may also offer the same two calls without a coroutine per request:
    # `submit_nowait(command, done, *, timeout)` and `read_nowait(query, mode, done, *,
    # timeout)` start the request, call `done(outcome)` exactly once (possibly before
    # returning), and return a handle whose `cancel()` forgets it. The binary client
    # protocol uses them when present (`pnyx.node.Node` and `DirectNode` have them);
    # they are optional, so a node for tests needs only the coroutines.

    """What the HTTP layer needs from a node. Any node accepts any request and
    forwards internally to the leader; the HTTP layer never redirects."""

    node_id: int
    metrics: Metrics

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        """Propose an encoded KV request (`kv.encode_request(Request | IdempotentRequest)`).

        Returns `Outcome(ok=True, result=<encoded kv result>, index=<log index>)`
        once the command is chosen and applied. Otherwise, by `timeout` seconds
        at the latest, `Outcome.failed(code, error)`, the `Code` saying why (the
        APIs answer by it, never by the words): `unknown=True` when the
        command may still be chosen (no quorum or no leader in time, leader
        lost its ballot), `unknown=False` when it was refused and will never be
        applied. Resubmitting the same bytes is safe: the machine de-duplicates
        by the request's identity.
        """
        ...

    async def read(self, query: bytes, mode: ReadMode, *, timeout: float) -> Outcome:
        """Answer an encoded query (`kv.encode_query`, `kv.encode_keys_query`) with `mode`'s
        guarantee: `Outcome(ok=True, result=<encoded kv result>, index=<applied index>)`,
        or `Outcome.failed(code, error)` if that guarantee could not be had in time."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-able: `id, role, leader, ballot, commit_index, applied_index, members`,
        where `members` is `{str(id): {"address": "host:port", "reachable": bool}}`."""
        ...


def leader_hint(node: Any) -> dict[str, Any]:
    """What a cut-off member tells a client besides 503: the leader it last followed
    (`leader`, an id, or None) and where that member serves HTTP (`leader_http`, or
    None), from the node's `leader_hint()` if it has one. A hint only: that member may
    have lost its lead since."""
    hint = getattr(node, "leader_hint", None)
    try:
        found = hint() if hint is not None else {}
    except Exception:  # a hint is not worth failing an answer for
        found = {}
    return {"leader": found.get("leader"), "leader_http": found.get("leader_http")}

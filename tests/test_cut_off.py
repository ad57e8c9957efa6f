"""A member cut off from every leader: the HTTP layer answers at once, and honestly.

The node's side (when a member is cut off, what it fails and how) is in
tests/test_node_requests.py; the clients' side (moving on at once, preferring
members that answered) in tests/test_client_preference.py; real partitions in
tests/test_partitions.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fake_node import FakeNode
from pnyx.protocol.multipaxos import Code, Outcome
from test_api_http import aio, error_of, serve


class CutOffAfterFirst(FakeNode):
    """Its first command is applied but answered unknown (a lost leader); from then on
    the member is cut off: refused at once, for certain, as a real one refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_replies = 1
        self.hint = {"leader": 2, "leader_http": "http://10.0.0.2:8001"}

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        if self.submitted:
            self.submitted.append(command)
            return Outcome.failed(Code.CUT_OFF, "node 1 has heard from no leader for 0.7 s")
        return await super().submit(command, timeout=timeout)

    async def read(self, query: bytes, mode: Any, *, timeout: float) -> Outcome:
        self.reads.append((query, mode))
        return Outcome.failed(Code.CUT_OFF, "node 1 has heard from no leader for 0.7 s")

    def leader_hint(self) -> dict[str, Any]:
        return self.hint


@aio
async def test_a_write_whose_first_attempt_may_apply_stays_unknown_when_the_member_is_cut_off(
) -> None:
    # Attempt 1 applied but answered unknown; attempt 2 (the same bytes) refused for
    # certain. The write did take effect: the answer must not say it failed for certain.
    async with serve(CutOffAfterFirst(), request_timeout=2.0) as (c, node):
        r = await c.put("/v1/kv/k", data=b"v")
        err = await error_of(r, 503, "unavailable")
        assert err["unknown"] is True
        assert len(node.submitted) == 2
        assert node.machine.query  # the first attempt was applied


@aio
async def test_a_cut_off_member_is_answered_at_once_with_retry_after_and_the_leader() -> None:
    node = CutOffAfterFirst()
    node.lose_replies = 0
    node.submitted.append(b"")  # refuse from the first command on
    async with serve(node, request_timeout=5.0) as (c, node):
        loop = asyncio.get_running_loop()
        for method, path in (("PUT", "/v1/kv/k"), ("GET", "/v1/kv/k")):
            started = loop.time()
            r = await c.request(method, path, data=b"v" if method == "PUT" else None)
            # Not retried at this member until the request timeout (5 s): at once.
            assert loop.time() - started < 0.5
            err = await error_of(r, 503, "unavailable")
            assert r.headers["Retry-After"] == "1"
            assert err["leader"] == 2 and err["leader_http"] == "http://10.0.0.2:8001"
            assert "no leader" in err["message"]
        assert len(node.submitted) == 2 and len(node.reads) == 1

"""Embed pnyx: replicate your own state machine across three nodes.

Three nodes run in this one process here, to keep the example short; each
talks to the others over real TCP on 127.0.0.1 and keeps its log in a real
SQLite file with fsync, exactly as it would on three machines. Any node takes
any command (the seed: writes go through any member) and every node applies
the same commands in the same order.

    .venv/bin/python examples/replicated_counter.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from pnyx.node import Address, Node, NodeConfig
from pnyx.statemachine import SafeApply
from pnyx.storage import SqliteLogStore

sys.path.insert(0, str(Path(__file__).parent))
from counter_machine import CounterMachine


class QueryableCounter(CounterMachine):
    """Reads outside the log (linearizable, quorum, stale) ask `query`."""

    def query(self, query: bytes) -> bytes:
        return str(self.value).encode()


async def main(ports: tuple[int, int, int] = (17401, 17402, 17403)) -> list[int]:
    members = {i: Address("127.0.0.1", port) for i, port in enumerate(ports, 1)}
    with tempfile.TemporaryDirectory() as data:
        nodes = []
        for i in members:
            config = NodeConfig(i, members, Path(data) / f"node-{i}")
            store = SqliteLogStore.open(config.data_dir / "log.db", node_id=i,
                                        cluster_id=config.cluster_id)
            nodes.append(Node(config, store, SafeApply(QueryableCounter())))
        for node in nodes:
            await node.start()
        try:
            # Ten increments, each through a different member, all at once.
            outcomes = await asyncio.gather(*(nodes[k % 3].submit(b"inc") for k in range(10)))
            print("each increment saw:", sorted(int(o.result) for o in outcomes))
            values = []
            for node in nodes:
                read = await node.read(b"", "linearizable")
                values.append(int(read.result))
                print(f"node {node.node_id} reads {read.result.decode()} "
                      f"(at index {read.index})")
            return values
        finally:
            for node in nodes:
                await node.stop()


if __name__ == "__main__":
    asyncio.run(main())

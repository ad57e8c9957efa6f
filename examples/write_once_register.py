"""A write-once register on three replicated processes.

Three clients race to set the register through three different members;
Paxos chooses exactly one value and every process learns it. Then a process
crashes and comes back from its durable record knowing the value.

    .venv/bin/python examples/write_once_register.py
"""

import asyncio
import tempfile

from pnyx.register import LocalRegister


async def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with LocalRegister(nodes=3, data_dir=data_dir) as register:
            results = await asyncio.gather(
                register.propose(b"red", via=1),
                register.propose(b"green", via=2),
                register.propose(b"blue", via=3),
            )
            print("each client was told:", [r.decode() for r in results])
            for i in (1, 2, 3):
                print(f"process {i} learned:", (await register.learn(via=i)).decode())
            register.restart(2)
            print("process 2 after a crash:", (await register.learn(via=2)).decode())


if __name__ == "__main__":
    asyncio.run(main())

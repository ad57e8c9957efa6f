"""The smallest useful state machine: a replicated counter.

Read this to learn how to implement `pnyx.statemachine.StateMachine` for your
own state. Commands are ASCII bytes:

    b"inc"        add one
    b"add <n>"    add the integer n (may be negative)
    b"get"        change nothing

Every command answers with the counter's value after it, as decimal ASCII. A
command the counter does not understand answers `b"error: ..."` and changes
nothing: it is already in the log, so it must get a result like any other, the
same one on every replica.

Run it: `python examples/counter_machine.py`.
"""

from __future__ import annotations

from pnyx.statemachine import SafeApply, SnapshotError, StateMachine

_SNAPSHOT_HEADER = b"counter/v1 "


class CounterMachine:
    """A counter; deterministic because it uses nothing but the command and its own value."""

    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes, index: int) -> bytes:
        # Parse and check everything before changing anything, so a bad
        # command leaves the state as it was.
        if command == b"inc":
            delta = 1
        elif command == b"get":
            delta = 0
        elif command.startswith(b"add "):
            try:
                delta = int(command[4:])
            except ValueError:
                return b"error: add needs an integer"
        else:
            return b"error: unknown command"
        self.value += delta
        return str(self.value).encode()

    def snapshot(self) -> bytes:
        # A header makes a snapshot of some other machine fail loudly in restore.
        return _SNAPSHOT_HEADER + str(self.value).encode()

    def restore(self, data: bytes) -> None:
        if not data.startswith(_SNAPSHOT_HEADER):
            raise SnapshotError("not a counter snapshot")
        try:
            value = int(data[len(_SNAPSHOT_HEADER):])
        except ValueError:
            raise SnapshotError("corrupt counter snapshot") from None
        self.value = value  # only once the whole snapshot is known good


if __name__ == "__main__":
    # SafeApply is cheap insurance: if apply ever raised, the replica would
    # answer b"error: <Type>: <message>" instead of stopping at that slot.
    machine: StateMachine = SafeApply(CounterMachine())
    log = [b"inc", b"add 41", b"add x", b"get"]
    for index, command in enumerate(log, start=1):
        print(index, command, "->", machine.apply(command, index))
    copy = CounterMachine()
    copy.restore(machine.snapshot())
    print("restored copy says", copy.apply(b"get", len(log) + 1))

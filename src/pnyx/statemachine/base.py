"""The `StateMachine` interface, and `SafeApply`, which keeps a faulty one from stopping a replica.

Paxos agrees on a *log* of commands; a state machine gives that log meaning.
Every replica feeds the chosen commands, in slot order, to its own copy of the
machine. If the machine is deterministic, every replica computes the same state
and the same results, so any replica can answer a client. This module owns that
contract; `pnyx.statemachine.kv` is the machine pnyx ships, and
`examples/counter_machine.py` is the smallest one worth reading.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Final, Protocol, runtime_checkable


class SnapshotError(ValueError):
    """`restore` was given bytes that are not a snapshot this machine can load.

    Raised instead of whatever the decoder happened to raise, so a node that
    receives a corrupt or foreign snapshot (from disk or from a peer during
    catch-up) can refuse it and fetch another, rather than crash.
    """


class LogOrderError(ValueError):
    """`apply` was given an index that does not increase: a bug in the driver, not the command.

    A machine may raise it to guard the log contract; `SafeApply` lets it
    through, because it says nothing about the command and turning it into a
    result would hide a replica applying the log wrongly.
    """


@runtime_checkable
class StateMachine(Protocol):
    """What a replicated log drives: implement these three methods for your own state.

    **The one rule: determinism.** `apply` is called on every replica with the
    same commands in the same order; it must compute the same new state and
    return the same result bytes everywhere. So inside `apply`:

    - use only the command, the index and the machine's own state;
    - no clock (`time.time()`), no randomness (`random`, `uuid4`), no I/O, no
      environment variables, no reading of another machine's state; if a command
      needs a time or a random number, the *client* picks it and puts it in the
      command, so it is decided once and replicated;
    - no iteration over anything whose order can differ between processes
      (`set` of `str` is ordered by a per-process hash seed!); sort first;
    - no floating point whose result may depend on the platform, if replicas run
      on different hardware.

    A command that makes no sense is *not* an exception: it is a result (for
    example `b"error: unknown command"`), because the command is already in the
    log and every replica will see it. If `apply` raises anyway, wrap the machine
    in `SafeApply`, which turns the exception into a deterministic error result.

    `snapshot` captures the whole state as bytes, and `restore` replaces the
    whole state with one; a replica that restores a snapshot taken after index
    *i* and then applies commands *i+1, i+2, ...* must end in the same state as
    one that applied every command from the start. Include in the snapshot
    everything `apply` depends on (for the key-value machine that includes its
    de-duplication table). Make `snapshot` canonical if you can (same state,
    same bytes), so replicas can compare snapshots by digest. `restore` must
    raise `SnapshotError` for bytes it cannot load and leave the state as it was.

    The methods are called from one thread, one at a time. (The one exception
    is the iterator of the optional `snapshot_chunks`: see
    `StreamingStateMachine`.)

    Example (see `examples/counter_machine.py` for the full version)::

        class Counter:
            def __init__(self) -> None:
                self.value = 0

            def apply(self, command: bytes, index: int) -> bytes:
                if command == b"inc":
                    self.value += 1
                return str(self.value).encode()

            def snapshot(self) -> bytes:
                return str(self.value).encode()

            def restore(self, data: bytes) -> None:
                try:
                    self.value = int(data)
                except ValueError:
                    raise SnapshotError("not a counter snapshot") from None
    """

    def apply(self, command: bytes, index: int) -> bytes:
        """Apply the command chosen for log slot `index`; return the result for its client.

        `index` is the position in the log; indices only increase but may skip
        (a slot may hold a no-op the machine never sees). It may be used in the
        state (the key-value machine records it as each key's `mod_index`),
        since it is the same on every replica.
        """
        ...

    def snapshot(self) -> bytes:
        """The whole state, as bytes that `restore` accepts."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot; raise `SnapshotError` if it is not one."""
        ...


@runtime_checkable
class StreamingStateMachine(StateMachine, Protocol):
    """A `StateMachine` that can be snapshotted without stopping `apply` (optional).

    A large state takes long to serialize; done in one call on the thread that
    applies commands, it stops service for that long. A machine that also
    implements `snapshot_chunks` lets its driver take the snapshot at a moment
    and write it out afterwards, in another thread, while commands go on being
    applied. Use the module-level `snapshot_chunks(machine)` to snapshot any
    machine, streaming or not.
    """

    def snapshot_chunks(self) -> Iterator[bytes]:
        """The state at this call, as an iterator of chunks of `snapshot()`'s bytes.

        - The call itself captures the state and returns quickly: it must not
          serialize (O(small), well under a millisecond whatever the state's
          size). It is made on the thread that calls `apply`, between two calls.
        - The iterator may be consumed later, possibly in *another* thread
          while `apply` (and `query`) go on in this one. Its chunks concatenate
          to exactly the bytes `snapshot()` would have returned at the moment
          of the call, which `restore` accepts; later commands do not show.
        - Each `next()` does bounded work (a few milliseconds at most, whatever
          the size), so a thread writing the chunks never holds the interpreter
          for long.

        A machine usually gets there by copy-on-write: the call hands its
        current data over, frozen, and the first later write to a frozen part
        copies that part (see `pnyx.statemachine.kv.KVMachine`).
        """
        ...


def snapshot_chunks(machine: StateMachine) -> Iterator[bytes]:
    """A snapshot of `machine` at this call, as chunks whose concatenation is `snapshot()`.

    Uses the machine's own `snapshot_chunks` if it has one (see
    `StreamingStateMachine`; `SafeApply` passes it through). A machine without
    it is serialized in one call, here, on the caller's thread, and the
    iterator yields that one chunk.
    """
    # Imported here: the clients import this package for the command encoding, and
    # must not load the protocol's code with it.
    from pnyx.protocol.multipaxos.log import capture
    return capture(machine)  # type: ignore[arg-type]


ERROR_PREFIX: Final = b"error: "
"""Every result `SafeApply` makes from an exception starts with these bytes."""

MAX_ERROR_MESSAGE: Final = 1000
"""Characters of the exception message kept in an error result (it is replicated and cached)."""

# CPython's default repr names an object by its memory address ("<Foo object at
# 0x7f3a...>"), which differs between processes: left in an error result it
# would make replicas disagree. The address is replaced by a fixed mark.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

# Exceptions that come from the process, not from the command: whether they
# happen depends on free memory or on how deep the caller's stack already is,
# which differ between replicas (and between the simulator and a real node).
# Turning them into a result would let replicas record different results for
# the same slot, so they propagate and the replica stops instead.
_ENVIRONMENTAL: Final = (MemoryError, RecursionError)


def error_result(exc: BaseException) -> bytes:
    """The result `SafeApply` gives for an exception: `b"error: <Type>: <message>"`.

    `<Type>` is the exception class's `__name__`; `<message>` is `str(exc)` with
    memory addresses masked, cut to `MAX_ERROR_MESSAGE` characters, UTF-8
    encoded (unencodable characters backslash-escaped). With no message the
    result is `b"error: <Type>"`.
    """
    try:
        message = str(exc)
    except Exception:
        # A broken __str__ must not break the replica either; the fallback is
        # the same everywhere.
        message = "<unprintable message>"
    message = _ADDRESS.sub(" at 0x?", message)[:MAX_ERROR_MESSAGE]
    text = type(exc).__name__ + (f": {message}" if message else "")
    return ERROR_PREFIX + text.encode("utf-8", "backslashreplace")


class SafeApply:
    """Wraps a `StateMachine` so that an exception in `apply` becomes a result, not a crash.

    A command is in the log for good: if applying it raised, the replica would
    raise again each time it replays the log, and never get past that slot.
    Because the machine is deterministic, every replica raises the same
    exception for the same command, so answering with `error_result(exc)` is
    itself deterministic and the replicas stay in step.

    The wrapped machine's state is whatever `apply` left it in when it raised
    (the same on every replica, by determinism); machines that check a command
    before changing anything leave it untouched. `MemoryError`,
    `RecursionError` (see `_ENVIRONMENTAL`) and `LogOrderError` are not
    caught. A result that is not `bytes` is reported as a `TypeError` result.
    `restore` turns any exception into `SnapshotError`; `snapshot` is passed
    through, and so is `snapshot_chunks` when the wrapped machine has one (only
    then does the wrapper have it, so `snapshot_chunks(SafeApply(m))` does what
    `snapshot_chunks(m)` does).
    """

    def __init__(self, machine: StateMachine) -> None:
        self.machine = machine
        chunks = getattr(machine, "snapshot_chunks", None)
        if chunks is not None:
            self.snapshot_chunks: Callable[[], Iterator[bytes]] = chunks

    def apply(self, command: bytes, index: int) -> bytes:
        try:
            result = self.machine.apply(command, index)
        except (*_ENVIRONMENTAL, LogOrderError):
            raise
        except Exception as exc:
            return error_result(exc)
        # `type() is` first: the exact type is the usual case and the cheaper test.
        if type(result) is not bytes and not isinstance(result, bytes):
            return error_result(
                TypeError(f"apply returned {type(result).__name__}, not bytes")
            )
        return result

    def query(self, query: bytes) -> bytes:
        """Reads outside the log, passed through, with the same protection as `apply`."""
        answer = getattr(self.machine, "query", None)
        if answer is None:
            return error_result(TypeError("this state machine answers no queries"))
        try:
            result = answer(query)
        except _ENVIRONMENTAL:
            raise
        except Exception as exc:
            return error_result(exc)
        if not isinstance(result, bytes):
            return error_result(TypeError(f"query returned {type(result).__name__}, not bytes"))
        return result

    def snapshot(self) -> bytes:
        return self.machine.snapshot()

    def restore(self, data: bytes) -> None:
        try:
            self.machine.restore(data)
        except SnapshotError:
            raise
        except _ENVIRONMENTAL:
            raise
        except Exception as exc:
            reason = error_result(exc)[len(ERROR_PREFIX):].decode()
            raise SnapshotError(f"restore failed: {reason}") from exc

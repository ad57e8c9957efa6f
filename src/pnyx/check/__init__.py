"""pnyx.check: history recording and the linearizability checker (stdlib only).

This package owns the question "did the store behave like one correct
key-value store?", asked of a recorded history. It imports nothing else from
pnyx, so anything (the simulator, node tools, tests) can use it.

- `pnyx.check.history`: the calls (`Put`, `Get`, `Delete`, `Cas`), `Op`,
  `History` with JSON (de)serialization, and the live `Recorder`.
- `pnyx.check.model`: the sequential key-value semantics checked against.
- `pnyx.check.linearizability`: `check(history, budget_seconds=...) -> Result`.

Typical use::

    rec = Recorder()
    h = rec.invoke("client-1", Put("x", 1))
    rec.complete(h)
    h = rec.invoke("client-2", Get("x"))
    rec.complete(h, 1)
    result = check(rec.history(), budget_seconds=5)
    assert result.ok, result.explanation
"""

from .history import (
    Call,
    Cas,
    Delete,
    Get,
    History,
    Op,
    Put,
    Recorder,
    Status,
)
from .linearizability import Result, Verdict, check
from .model import apply

__all__ = [
    "Call",
    "Cas",
    "Delete",
    "Get",
    "History",
    "Op",
    "Put",
    "Recorder",
    "Result",
    "Status",
    "Verdict",
    "apply",
    "check",
]

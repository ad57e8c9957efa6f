"""The picture of a history: one self-contained HTML page, as Porcupine draws it.

This module owns drawing a `History` with the checker's `Result`: per key, one
row per client, each operation a bar from its invocation to its completion (an
op whose outcome is unknown runs to the end of the history, hatched; a failed
one is grey). When the history is not linearizable the offending key comes
first and opens on the smallest failing part: the op no order gets past (red),
the ops concurrent with it (orange), and the last ops of the one order that
works up to there (numbered in that order), with the checker's explanation
beside it. Other keys open on demand, so a long history never draws all at
once. Like the rest of `pnyx.check`, stdlib only; the page (`history_view.html`
beside this module: HTML, CSS and JavaScript with SVG) needs no network.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from .history import Cas, Delete, Get, History, Op, Put, Status
from .linearizability import Result, Verdict

_SHOW_ORDER = 10  # ops of the witness order numbered on the picture (as in the explanation)


def _label(op: Op) -> str:
    call, r = op.call, op.result
    if op.status is Status.UNKNOWN:
        tail = " → ?"
    elif op.status is Status.FAIL:
        tail = " → failed"
    elif isinstance(call, Get):
        tail = " → " + ("absent" if r is None else repr(r))
    elif isinstance(call, Cas | Delete) and r is not None:
        tail = " → " + ("ok" if r else "no")
    else:
        tail = ""
    if isinstance(call, Put):
        head = f"put {call.value!r}"
    elif isinstance(call, Cas):
        head = f"cas {call.expected!r}→{call.new!r}"
    elif isinstance(call, Delete):
        head = "delete"
    else:
        head = "get"
    return head + tail


def history_data(history: History, result: Result | None) -> dict[str, Any]:
    """What the page draws: keys (the failing one first), clients, ops, the verdict."""
    by_key = history.by_key()
    clients = sorted({str(op.client) for op in history}, key=lambda c: (len(c), c))
    client_index = {c: n for n, c in enumerate(clients)}
    end = max([op.complete or op.invoke for op in history] + [0.0])
    failing_key = result.key if result is not None and result.verdict is Verdict.VIOLATION \
        else None
    keys = sorted(by_key, key=lambda k: (k != failing_key, repr(k)))
    out_keys = []
    for key in keys:
        ops = by_key[key]
        entry: dict[str, Any] = {
            "key": repr(key),
            "verdict": str(result.per_key.get(key, "unchecked")) if result else "unchecked",
            "ops": [[op.id, client_index[str(op.client)], op.invoke, op.complete,
                     _label(op), str(op.status), str(op)] for op in ops],
        }
        if key == failing_key and result is not None and result.op is not None:
            order = [o.id for o in result.linearized][-_SHOW_ORDER:]
            entry["fail"] = {
                "op": result.op.id,
                "concurrent": [o.id for o in result.concurrent],
                "order": order,
                "orderFrom": max(0, len(result.linearized) - _SHOW_ORDER),
            }
        out_keys.append(entry)
    return {
        "clients": clients,
        "end": end,
        "keys": out_keys,
        "verdict": str(result.verdict) if result else "unchecked",
        "explanation": result.explanation if result else "",
        "ops": len(history),
    }


def history_html(history: History, result: Result | None, title: str = "history") -> str:
    blob = json.dumps(history_data(history, result), separators=(",", ":"))
    blob = blob.replace("</", "<\\/")
    page = (resources.files("pnyx.check") / "history_view.html").read_text(encoding="utf-8")
    return page.replace("{{TITLE}}", html.escape(title)).replace("{{DATA}}", blob)


def write_history_html(path: str | Path, history: History, result: Result | None,
                       title: str = "history") -> int:
    """Write the picture of `history` to `path`; returns its size in bytes."""
    raw = history_html(history, result, title).encode("utf-8")
    Path(path).write_bytes(raw)
    return len(raw)

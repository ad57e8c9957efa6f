"""The replay of a simulated run: a trace in, one self-contained HTML page out.

This module owns reading a trace (`pnyx.sim.trace`: one JSON object per line)
with one-line errors for bad files, compacting it into what the page needs,
and inlining it with the page's HTML, CSS and JavaScript (`replay.html`,
`replay.css`, `replay.js` beside this module) into one file that opens with
no network.

The compact form pairs each `send` with the event that ends its flight
(`deliver`, `drop`, or `lost`), so the page can draw a message in the air
between the two; identical messages are stored once. A `lost` line names no
message: it ends the oldest flight between its two processes. Values are
shortened (a batch of key-value commands becomes "c1:put k2=c1.2"), so a run
of 100,000 events stays a few megabytes. A page holds at most `MAX_EVENTS`
events: a longer trace is paged (`pnyx replay TRACE --from N`), and the page
says which part it shows.
"""

from __future__ import annotations

import base64
import html
from collections import deque
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

MAX_EVENTS = 200_000  # per page: parsing and indexing stay well under a second

# Event kinds, in the order the page's script knows them (replay.js `KINDS`).
KINDS = ["send", "deliver", "drop", "lost", "durable", "propose", "learn", "chosen",
         "crash", "restart", "partition", "heal", "reboot", "rebooted"]
_KIND = {name: n for n, name in enumerate(KINDS)}
_FAULTS = {"crash", "restart", "partition", "heal", "reboot"}
_SKIP_FIELDS = {"type", "src", "ballot", "slot", "value", "id", "payload", "query", "result"}


class TraceError(ValueError):
    """A trace that cannot be replayed; the message is one line."""


def _lines(data: bytes, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if not data.strip():
        raise TraceError(f"{name} is empty: no events to replay")
    decoder = msgspec.json.Decoder()
    lines = data.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = decoder.decode(line)
        except msgspec.DecodeError:
            if n == len(lines) and n > 1:
                raise TraceError(f"{name}: line {n} is cut short (a truncated trace?)") from None
            raise TraceError(f"{name}: line {n} is not JSON (is this a pnyx trace?)") from None
        if not isinstance(record, dict) or "t" not in record or "ev" not in record:
            raise TraceError(f"{name}: line {n} is not a trace event (no \"t\" and \"ev\")")
        yield n, record


def records(data: bytes, name: str = "trace") -> Iterator[dict[str, Any]]:
    """The events of a trace, in order (a `TraceError` of one line for a bad file)."""
    for _, record in _lines(data, name):
        yield record


def load_trace(path: str | Path) -> bytes:
    """The bytes of a trace file, checked to be a readable trace (one-line errors)."""
    data = Path(path).read_bytes()
    for _ in _lines(data, str(path)):
        pass
    return data


def _text(value: Any, limit: int = 40) -> str:
    s = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _command(cmd: Any) -> str:
    """One key-value command of a batch, e.g. "c1:put k2=c1.2"."""
    try:
        payload = msgspec.msgpack.decode(base64.b64decode(cmd[2]))
        _, client, _, call = payload
        op, key, value = call[0], call[1], call[2]
        shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if op == "put":
            return f"{client}:put {key}={shown}"
        if op == "cas":
            return f"{client}:cas {key}→{shown}"
        return f"{client}:{op} {key}"
    except Exception:  # any shape we do not know: show it raw, shortened
        return _text(cmd, 24)


def _batch(value: Any) -> str:
    """A Multi-Paxos slot value: "no-op", a membership change, or its commands. (A
    `Batch` may leave out its trailing defaults: the no-op is `[]` or `[[], null]`,
    commands `[cmds]` or `[cmds, null]`, a change `[[], change]`.)"""
    if isinstance(value, list) and not value:
        return "no-op"
    if isinstance(value, list) and len(value) == 2:
        if isinstance(value[1], list):
            return _change(value[1])
        if value[1] is None:
            value = value[:1]  # a trace writes every field: [cmds, null]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        cmds = value[0]
        if not cmds:
            return "no-op"
        shown = "; ".join(_command(c) for c in cmds[:2])
        return shown + (f" +{len(cmds) - 2}" if len(cmds) > 2 else "")
    return _text(value)


def _change(change: list[Any]) -> str:
    """A membership change (`Change`: origin, id, base, add, remove, promote)."""
    try:
        _, _, base, add, *rest = change
        remove = rest[0] if rest else []
        promote = rest[1] if len(rest) > 1 else []
        parts = [f"+{m[0]}" for m in add] + [f"-{i}" for i in remove] + [
            f"^{i}" for i in promote]
        return f"members v{base}: {' '.join(parts)}"
    except Exception:
        return _text(change, 24)


def _message(msg: dict[str, Any], kv: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"y": msg.get("type", "?"), "s": msg.get("src", 0)}
    if "ballot" in msg:
        out["b"] = msg["ballot"]
    if "slot" in msg:
        out["n"] = msg["slot"]
    if "value" in msg:
        out["v"] = _batch(msg["value"]) if kv else _text(msg["value"])
    extra: dict[str, Any] = {}
    for k, v in msg.items():
        if k in _SKIP_FIELDS:
            continue
        if k == "accepted" and isinstance(v, dict):  # single-decree promise
            extra["acc"] = f"{v.get('ballot')}:{_text(v.get('value'), 20)}"
        elif k == "entries" and isinstance(v, list):  # promise or chosen: slots reported
            extra["slots"] = [e[0] for e in v if isinstance(e, list) and e]
            noops = [e[0] for e in v if isinstance(e, list) and len(e) > 1
                     and _batch(e[-1]) == "no-op"]
            if noops:
                extra["noop"] = noops
            if msg.get("type") == "promise":
                extra["eb"] = [e[1] for e in v if isinstance(e, list) and len(e) > 1]
        elif k == "commands" and isinstance(v, list):
            extra["cmds"] = _batch([v])
        elif k == "known" and isinstance(v, list):
            extra["known"] = v[:20]
        elif v is None or isinstance(v, bool | int | float | str):
            extra[k] = v if not isinstance(v, str) else _text(v, 24)
    if extra:
        out["x"] = extra
    return out


class _Compactor:
    def __init__(self, kv: bool) -> None:
        self.kv = kv
        self.msgs: list[dict[str, Any]] = []
        self._msg_index: dict[bytes, int] = {}
        self.events: list[list[Any]] = []
        self.nodes: set[int] = set()
        self._flying: dict[tuple[int, int], deque[int]] = {}  # (src, dst) -> send event rows
        self._by_msg: dict[tuple[int, int, bytes], deque[int]] = {}
        self._last_send: int | None = None
        self._raw: dict[int, bytes] = {}  # send row -> its message's JSON

    def _msg(self, msg: dict[str, Any]) -> tuple[int, bytes]:
        raw = msgspec.json.encode(msg)
        n = self._msg_index.get(raw)
        if n is None:
            n = self._msg_index[raw] = len(self.msgs)
            self.msgs.append(_message(msg, self.kv))
        return n, raw

    def _end(self, row: int, t: int, how: int) -> None:
        send = self.events[row]
        send[5], send[6] = t, how

    def _take(self, src: int, dst: int, raw: bytes | None, row: int | None = None) -> int | None:
        """The flight a delivery or loss ends: the oldest one of that message (or, for a
        loss, which names no message, the oldest between the two; for a drop, `row`)."""
        if raw is not None:
            q = self._by_msg.get((src, dst, raw))
            row = q.popleft() if q else None
            if row is not None:
                self._flying[(src, dst)].remove(row)
            return row
        flying = self._flying.get((src, dst))
        if not flying:
            return None
        if row is None:
            row = flying[0]
        elif row not in flying:
            return None
        flying.remove(row)
        self._by_msg[(src, dst, self._raw[row])].remove(row)
        return row

    def add(self, rec: dict[str, Any]) -> None:
        t = round(float(rec["t"]) * 1e6)
        ev = str(rec["ev"])
        kind = _KIND.get(ev)
        if ev == "send" and isinstance(rec.get("msg"), dict):
            msg = rec["msg"]
            m, raw = self._msg(msg)
            src, dst = int(msg.get("src", 0)), int(rec.get("dst", 0))
            self.nodes.update((src, dst))
            row = len(self.events)
            # [t, kind, src, dst, msg, end time (-1: not in this page), how it ended]
            self.events.append([t, 0, src, dst, m, -1, 3])
            self._raw[row] = raw
            self._flying.setdefault((src, dst), deque()).append(row)
            self._by_msg.setdefault((src, dst, raw), deque()).append(row)
            self._last_send = row
            return
        if ev == "deliver" and isinstance(rec.get("msg"), dict):
            msg = rec["msg"]
            m, raw = self._msg(msg)
            src, dst = int(msg.get("src", 0)), int(rec.get("dst", 0))
            row = self._take(src, dst, raw)
            if row is not None:
                self._end(row, t, 0)
            self.events.append([t, 1, src, dst, m, -1 if row is None else row])
            return
        if ev in ("drop", "lost"):
            src, dst = int(rec.get("src", 0)), int(rec.get("dst", 0))
            # A drop follows its own send at once; a loss ends the oldest flight.
            row = self._take(src, dst, None, self._last_send if ev == "drop" else None)
            if row is not None:
                self._end(row, t, 1 if ev == "drop" else 2)
            why = rec.get("why", "dropped by the network")
            m = self.events[row][4] if row is not None else -1
            self.events.append([t, _KIND[ev], src, dst, m, -1 if row is None else row, why])
            return
        node = rec.get("node")
        if isinstance(node, int):
            self.nodes.add(node)
        if kind is None:
            details = {k: v for k, v in rec.items() if k not in ("t", "ev")}
            self.events.append([t, ev, _text(details, 80)])
        elif ev == "durable":
            self.events.append([t, kind, node, rec.get("records", 1)])
        elif ev in ("propose", "learn"):
            self.events.append([t, kind, node, _text(rec.get("value"))])
        elif ev == "chosen":
            self.events.append([t, kind, _text(rec.get("value"))])
        elif ev == "rebooted":
            self.events.append([t, kind, node])
        elif ev in _FAULTS:
            nodes = [int(n) for n in rec.get("nodes", [])]
            self.nodes.update(nodes)
            self.events.append([t, kind, nodes])
        else:
            self.events.append([t, kind])



def compact(records: Iterable[dict[str, Any]], kv: bool, start: int = 0,
            limit: int = MAX_EVENTS) -> tuple[dict[str, Any], int]:
    """The page's data for events [start, start + limit) of `records`, and their total."""
    c = _Compactor(kv)
    total = 0
    for rec in records:
        if start <= total < start + limit:
            c.add(rec)
        total += 1
    data = {"kinds": KINDS, "msgs": c.msgs, "ev": c.events, "nodes": sorted(c.nodes)}
    return data, total


def _guess_kv(data: bytes) -> bool:
    head = data[:200_000]
    return b'"heartbeat"' in head or b'"first":' in head or b'"slot":' in head


def replay_html(trace: bytes, *, title: str, summary: str = "", kv: bool | None = None,
                start: int = 0, limit: int = MAX_EVENTS, name: str = "trace",
                nodes: int | None = None) -> str:
    """The replay page of a trace (the bytes of JSON lines), as one HTML document."""
    kv = _guess_kv(trace) if kv is None else kv
    data, total = compact((rec for _, rec in _lines(trace, name)), kv, start, limit)
    if start and start >= total:
        raise TraceError(f"{name} has {total} events: nothing from event {start}")
    if nodes:
        data["nodes"] = sorted(set(data["nodes"]) | set(range(1, nodes + 1)))
    data["meta"] = {"title": title, "kind": "kv" if kv else "sim", "summary": summary,
                    "total": total, "start": start, "shown": len(data["ev"]),
                    "limit": limit}
    blob = msgspec.json.encode(data).replace(b"</", b"<\\/").decode()
    pkg = resources.files("pnyx.viz")
    page = (pkg / "replay.html").read_text(encoding="utf-8")
    return (page.replace("{{TITLE}}", html.escape(title))
                .replace("/*{{STYLE}}*/", (pkg / "replay.css").read_text(encoding="utf-8"))
                .replace("/*{{SCRIPT}}*/", (pkg / "replay.js").read_text(encoding="utf-8"))
                .replace("{{DATA}}", blob))


def write_replay(path: str | Path, trace: bytes, **kwargs: Any) -> int:
    """Write the replay page to `path`; returns its size in bytes."""
    text = replay_html(trace, **kwargs)
    raw = text.encode("utf-8")
    Path(path).write_bytes(raw)
    return len(raw)

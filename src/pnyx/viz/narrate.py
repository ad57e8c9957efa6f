"""`pnyx sim --narrate`: a single-decree run told step by step in words.

This module owns turning a `pnyx sim` trace into sentences: who prepares with
which ballot, who promises and why (the seed's check one, with the two
ballots), who refuses, which value the value rule picks and from what was
reported, who accepts, when the value is chosen and who learns it, and what
faults did (a crash loses what was not yet durable and the messages sent to
the process while it is down). Times are in milliseconds throughout. A run that
chose nothing because proposers kept pre-empting each other is named a
livelock, with the ballots counted; a mutant that survived its seed is said to
need a sweep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any


def _b(ballot: Any) -> tuple[int, int]:
    if not ballot:
        return (-1, -1)
    r, _, n = str(ballot).partition(".")
    return (int(r), int(n or 0))


def _ms(t: float) -> str:
    return f"{t * 1000:9.3f} ms"


def narrate(records: Iterable[dict[str, Any]], *, nodes: int, safe: bool = True,
            chosen: str | None = None, mutant: str | None = None,
            command: str = "pnyx sim") -> Iterator[str]:
    """The lines of the story of one `pnyx sim` run (its trace records, in order)."""
    recs = list(records)
    majority = nodes // 2 + 1
    promised: dict[int, str] = {}
    accepted: dict[int, str] = {}
    own: dict[int, str] = {}
    # proposer -> ballot -> {acceptor: what it reported accepted, or None}
    promises: dict[int, dict[str, dict[int, str | None]]] = {}
    prepared: Counter[int] = Counter()
    preempted: Counter[tuple[str, str]] = Counter()
    first_chosen: float | None = None
    down_since: dict[int, int] = {}
    i = 0
    n = len(recs)
    pending = ""
    while i < n:
        r = recs[i]
        t, ev = float(r["t"]), r["ev"]
        if ev == "send":
            m = r["msg"]
            # One line for a message sent to several processes at once.
            dsts, drops = [r["dst"]], []
            j = i + 1
            while j < n and recs[j]["t"] == r["t"]:
                nxt = recs[j]
                if nxt["ev"] == "send" and nxt["msg"] == m:
                    dsts.append(nxt["dst"])
                elif nxt["ev"] == "drop" and nxt["src"] == m["src"]:
                    drops.append(nxt["dst"])
                else:
                    break
                j += 1
            i = j
            line = _send(m, dsts, promised, accepted, own, promises, prepared, preempted,
                         majority)
            if line:
                if drops:
                    copies = "copy" if len(drops) == 1 else "copies"
                    line += f" (the network drops the {copies} to {_list(drops)})"
                yield f"{_ms(t)}  {line}"
            if pending:
                yield pending
                pending = ""
            continue
        if ev == "deliver":
            m = r["msg"]
            if m["type"] == "promise":
                acc = m.get("accepted")
                shown = f"{acc['ballot']}:{acc['value']}" if isinstance(acc, dict) else None
                promises.setdefault(r["dst"], {}).setdefault(m["ballot"], {})[m["src"]] = shown
        elif ev == "propose":
            own[r["node"]] = r["value"]
            yield f"{_ms(t)}  a client asks node {r['node']} to propose {r['value']}"
        elif ev == "chosen":
            # Told after the acceptance that made it so (the trace has it just before).
            first_chosen = t
            pending = (f"{_ms(t)}  *** {r['value']} is CHOSEN: a majority ({majority} of "
                       f"{nodes}) accepted it in one ballot")
        elif ev == "learn":
            yield f"{_ms(t)}  node {r['node']} learns that {r['value']} is chosen"
        elif ev == "crash":
            node = r["nodes"][0]
            down_since[node] = i
            lost = _lost_while_down(recs, i, node)
            yield (f"{_ms(t)}  CRASH node {node}: whatever it had not yet made durable is "
                   f"gone; {lost} message{'s' if lost != 1 else ''} sent to it "
                   f"{'are' if lost != 1 else 'is'} lost while it is down (what it promised "
                   "or accepted was durable before it said so)")
        elif ev == "restart":
            node = r["nodes"][0]
            yield (f"{_ms(t)}  node {node} restarts from its disk (promised "
                   f"{promised.get(node, 'nothing')}, accepted {accepted.get(node, 'nothing')})")
        elif ev == "partition":
            cut = r["nodes"]
            who = f"nodes {_list(cut)} are" if len(cut) > 1 else f"node {cut[0]} is"
            yield f"{_ms(t)}  PARTITION: {who} cut off from the rest"
        elif ev == "heal":
            yield f"{_ms(t)}  the partition heals"
        elif ev == "rebooted":
            yield (f"{_ms(t)}  REBOOT node {r['node']}: crashed and restarted at once; "
                   "what it sent ahead of its disk is forgotten")
        elif ev == "lost" and r.get("why") == "partitioned":
            yield f"{_ms(t)}  a message {r['src']} → {r['dst']} is lost to the partition"
        i += 1
    if pending:
        yield pending
    yield from _ending(recs, nodes, safe, chosen, first_chosen, mutant, prepared, preempted,
                       command)


def _list(xs: Iterable[Any]) -> str:
    return ", ".join(str(x) for x in xs)


def _lost_while_down(recs: list[dict[str, Any]], start: int, node: int) -> int:
    lost = 0
    for r in recs[start + 1:]:
        if r["ev"] == "restart" and r["nodes"][0] == node:
            break
        if r["ev"] == "lost" and r.get("dst") == node and r.get("why") == "down":
            lost += 1
    return lost


def _send(m: dict[str, Any], dsts: list[int], promised: dict[int, str],
          accepted: dict[int, str], own: dict[int, str],
          promises: dict[int, dict[str, dict[int, str | None]]], prepared: Counter[int],
          preempted: Counter[tuple[str, str]], majority: int) -> str | None:
    kind, src, ballot = m["type"], m["src"], m.get("ballot")
    if kind == "prepare":
        prepared[src] += 1
        round_, node = _b(ballot)
        return (f"node {src} prepares with ballot {ballot} (round {round_}, its id {node}) "
                f"and asks {_list(dsts)} to promise")
    if kind == "promise":
        before = promised.get(src)
        promised[src] = ballot
        why = (f"check one: {ballot} > {before}" if before
               else "check one: it had promised nothing")
        acc = m.get("accepted")
        report = (f"reports it accepted {acc['ballot']}:{acc['value']}" if isinstance(acc, dict)
                  else "reports it accepted nothing")
        return f"node {src} promises {ballot} to node {dsts[0]} ({why}) and {report}"
    if kind == "rejected":
        preempted[(ballot, m["promised"])] += 1
        return (f"node {src} refuses {ballot} from node {dsts[0]}: it promised {m['promised']} "
                f"(check one: {ballot} ≤ {m['promised']})")
    if kind == "accept":
        got = promises.get(src, {}).get(ballot, {})
        reported = {a: v for a, v in got.items() if v}
        if reported:
            best = max(reported.values(), key=lambda v: _b(v.split(":")[0]))
            told = _list(f"{v} by {a}" for a, v in reported.items())
            rule = (f"the value rule: reported {told}; "
                    f"the highest-numbered is {best.split(':')[0]}, so {m['value']}")
        else:
            mine = own.get(src)
            rule = ("the value rule: nobody in the quorum reported a value, so its own "
                    f"{mine}" if mine == m["value"] else
                    f"the value rule: nobody reported a value, so {m['value']}")
        count = len(got) or majority
        return (f"node {src} has {count} promises for {ballot} (a majority is {majority}); "
                f"{rule}; it asks {_list(dsts)} to accept {ballot}={m['value']}")
    if kind == "accepted":
        accepted[src] = f"{ballot}:{m['value']}"
        if _b(ballot) > _b(promised.get(src)):
            promised[src] = ballot
        return f"node {src} accepts {ballot}={m['value']} (accept rule: not below its promise)"
    if kind in ("forward", "learned", "chosen"):
        return f"node {src} sends {kind} to {_list(dsts)}"
    return None


def _ending(recs: list[dict[str, Any]], nodes: int, safe: bool, chosen: str | None,
            first_chosen: float | None, mutant: str | None, prepared: Counter[int],
            preempted: Counter[tuple[str, str]], command: str) -> Iterator[str]:
    end = float(recs[-1]["t"]) if recs else 0.0
    yield ""
    if chosen is None and first_chosen is None:
        ballots = sum(prepared.values())
        if ballots > 2 * nodes and len(prepared) > 1:
            per = ", ".join(f"node {p}: {c}" for p, c in sorted(prepared.items()))
            top = ", ".join(f"{a} by {b} ×{c}" for (a, b), c in preempted.most_common(4))
            yield (f"LIVELOCK: nothing chosen in {end * 1000:.3f} ms. {len(prepared)} proposers "
                   f"started {ballots} ballots ({per}) and kept pre-empting each other: "
                   f"{sum(preempted.values())} refusals, e.g. {top}.")
            yield ("The seed's cure: a distinguished proposer (--distinguished 1), or "
                   "randomness (drop --no-backoff: a random backoff before retrying).")
        else:
            yield f"Nothing was chosen within {end * 1000:.3f} ms."
    else:
        yield (f"Chosen at {first_chosen * 1000:.3f} ms." if first_chosen is not None
               else f"Chosen: {chosen}.")
    if mutant:
        if safe:
            yield (f"The mutant {mutant!r} did not break this seed: one run is one schedule. "
                   f"A sweep is needed to see it fail: {command} --seeds 0..999 "
                   f"--mutant {mutant} (with the same faults).")
        else:
            yield f"The mutant {mutant!r} broke a safety rule on this seed (see below)."

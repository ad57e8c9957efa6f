"""The key-value commands of `pnyx`: put, get, del, cas, keys and status against a cluster.

`add_parsers(subparsers)` adds them to the `pnyx` command's subparsers and
`run(args)` carries one out with `pnyx.Client`. Output is readable by default
and JSON with `--json`. `get` prints the value exactly as stored, with a
newline after it only on a terminal; `status` asks every endpoint and says
which node answered at which. Every flag is checked in `run`, so a wrong one gives a
one-line error on stderr and exit status 2; a failed operation (no such key,
precondition failed, no node available) gives one line and status 1. `run`
never raises for either.

    pnyx put greeting hello --endpoints 127.0.0.1:8001,127.0.0.1:8002
    pnyx get greeting --consistency stale
    pnyx cas greeting hello hi
    pnyx keys app/ --limit 10 --json

`--endpoints` defaults to the `PNYX_ENDPOINTS` environment variable, then to
127.0.0.1:8001. TLS as etcdctl does it: `--cacert FILE` (the CA the nodes'
certificates must chain to; default the system's), `--cert FILE --key FILE`
(a client certificate, for nodes started with `--client-cert-auth`); any of
them, or `https://` endpoints, turns TLS on:

    pnyx get greeting --endpoints https://10.0.0.1:8001 --cacert certs/ca.pem \
        --cert certs/client-app.pem --key certs/client-app-key.pem
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Final

from pnyx.client import CONSISTENCY, Client, parse_endpoints
from pnyx.client.common import endpoint_schemes, tls_context
from pnyx.errors import PnyxError, PreconditionFailed, Unavailable

DEFAULT_ENDPOINTS: Final = "127.0.0.1:8001"
ENDPOINTS_ENV: Final = "PNYX_ENDPOINTS"
COMMANDS: Final = ("put", "get", "del", "cas", "keys", "status")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class _Usage(Exception):
    """A bad flag: one line for stderr, exit status 2."""


def _add_common(p: argparse.ArgumentParser) -> None:
    # Everything is parsed as text here and checked in `run`, so that a bad
    # value is the same one-line error whichever parser class the caller uses.
    p.add_argument("--endpoints", metavar="HOST:PORT,...",
                   help=f"nodes to talk to (default ${ENDPOINTS_ENV}, else {DEFAULT_ENDPOINTS})")
    p.add_argument("--timeout", metavar="SECONDS", default="10",
                   help="give up after this long, over all retries (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.add_argument("--cacert", dest="tls_cacert", metavar="FILE",
                   help="TLS: the CA the nodes' certificates must chain to (turns TLS on)")
    p.add_argument("--cert", dest="tls_cert", metavar="FILE",
                   help="TLS: present this client certificate (with --key)")
    # dest: `key` is the key-value key.
    p.add_argument("--key", dest="tls_key", metavar="FILE", help="TLS: the key of --cert")


def _add_conditions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prev-value", metavar="VALUE", help="only if the key has this value")
    p.add_argument("--prev-index", metavar="N", help="only if the key was last written at N")
    p.add_argument("--prev-exist", metavar="true|false",
                   help="only if the key exists (true) or does not (false)")


def add_parsers(subparsers: Any) -> None:
    """Add put, get, del, cas, keys and status to `subparsers` (from `add_subparsers`)."""
    p = subparsers.add_parser("put", help="set a key", description="Set KEY to VALUE "
                              "(\"-\" reads the value from standard input).")
    p.add_argument("key")
    p.add_argument("value")
    _add_conditions(p)
    _add_common(p)
    p.set_defaults(kv_command="put", run=run)

    p = subparsers.add_parser("get", help="read a key",
                              description="Print the value of KEY.")
    p.add_argument("key")
    p.add_argument("--consistency", default="linearizable",
                   help="linearizable (default), quorum or stale")
    _add_common(p)
    p.set_defaults(kv_command="get", run=run)

    p = subparsers.add_parser("del", help="delete a key", description="Delete KEY.")
    p.add_argument("key")
    _add_conditions(p)
    _add_common(p)
    p.set_defaults(kv_command="del", run=run)

    p = subparsers.add_parser("cas", help="compare-and-swap a key",
                              description="Set KEY to NEW only if its value is EXPECTED.")
    p.add_argument("key")
    p.add_argument("expected")
    p.add_argument("new")
    _add_common(p)
    p.set_defaults(kv_command="cas", run=run)

    p = subparsers.add_parser("keys", help="list keys",
                              description="List the keys that start with PREFIX, in order.")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--limit", default="100", metavar="N",
                   help="at most N keys; 0 for all (default 100)")
    p.add_argument("--consistency", default="linearizable",
                   help="linearizable (default), quorum or stale")
    _add_common(p)
    p.set_defaults(kv_command="keys", run=run)

    p = subparsers.add_parser("status", help="show each node's view of the cluster",
                              description="Ask every endpoint for its node's status: with one "
                              "endpoint, that node's view in full; with several, one line per "
                              "endpoint saying which node answered there (or that none did). "
                              "--json prints one JSON object per endpoint, one per line.")
    _add_common(p)
    p.set_defaults(kv_command="status", run=run)


# --- checking flags -----------------------------------------------------------


def _endpoints(args: argparse.Namespace) -> list[str]:
    text = args.endpoints
    if text is None:
        text = os.environ.get(ENDPOINTS_ENV) or DEFAULT_ENDPOINTS
    entries = [e.strip() for e in text.split(",") if e.strip()]
    try:
        parsed = parse_endpoints(entries)
    except ValueError as exc:
        raise _Usage(f"--endpoints: {exc}") from None
    # Each keeps its scheme, if it has one: it says whether to speak TLS.
    names = []
    for entry, (host, port) in zip(entries, parsed, strict=True):
        scheme = "".join(f"{s}://" for s in endpoint_schemes([entry]))
        names.append(scheme + (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))
    return names


def _tls(args: argparse.Namespace, endpoints: list[str]) -> dict[str, Any]:
    """The client's TLS argument, if TLS is on (checked here: one line if it is wrong)."""
    try:
        ctx = tls_context(endpoints, ssl_context=None,
                          cacert=getattr(args, "tls_cacert", None),
                          cert=getattr(args, "tls_cert", None),
                          key=getattr(args, "tls_key", None))
    except ValueError as exc:
        raise _Usage(str(exc).replace("cert=", "--cert")) from None
    return {} if ctx is None else {"ssl_context": ctx}


def _timeout(args: argparse.Namespace) -> float:
    try:
        value = float(args.timeout)
    except (TypeError, ValueError):
        raise _Usage(f"--timeout: {args.timeout!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise _Usage(f"--timeout: {args.timeout} must be more than 0 and at most 3600")
    return value


def _non_negative(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise _Usage(f"{flag}: {text!r} is not a non-negative integer")
    return int(text)


def _bool(flag: str, text: str | None) -> bool | None:
    if text is None:
        return None
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise _Usage(f"{flag}: {text!r} must be true or false")
    return lowered == "true"


def _consistency(text: str) -> str:
    if text not in CONSISTENCY:
        raise _Usage(f"--consistency: {text!r} must be one of {', '.join(CONSISTENCY)}")
    return text


def _key(text: str, what: str = "key") -> str:
    if not text:
        raise _Usage(f"{what} must not be empty")
    if "\x00" in text:
        raise _Usage(f"{what} must not contain NUL")
    # argparse hands over undecodable command-line bytes as lone surrogates.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Usage(f"{what} is not valid UTF-8") from None
    return text


def _value(text: str, stdin: IO[bytes]) -> bytes:
    if text == "-":
        return stdin.read()
    # surrogateescape: bytes the terminal gave that are not UTF-8 go through as they were.
    return os.fsencode(text)


# --- output -------------------------------------------------------------------


def _value_json(value: bytes) -> dict[str, Any]:
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"value": text, "value_base64": base64.b64encode(value).decode("ascii")}


def _escaped(key: str) -> str:
    """`key` safe for a terminal and for the tab-separated listing: a control or other
    unprintable character (tab and newline among them) and the backslash written as
    Python escapes them, so a key cannot move the cursor, recolour the terminal or
    forge a line, and the escaped form reads back unambiguously."""
    if key.isprintable() and "\\" not in key:
        return key
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in key)


def _print_json(out: IO[str], data: Any) -> None:
    out.write(json.dumps(data, ensure_ascii=False) + "\n")


def _print_index(out: IO[str], as_json: bool, key: str, index: int) -> None:
    if as_json:
        _print_json(out, {"key": key, "index": index})
    else:
        out.write(f"OK index={index}\n")


def _describe_status(status: dict[str, Any]) -> list[str]:
    lines = [
        f"node {status.get('id')}: {status.get('role')}, leader {status.get('leader')}, "
        f"ballot {status.get('ballot')}",
        f"commit index {status.get('commit_index')}, applied index {status.get('applied_index')}",
    ]
    members = status.get("members")
    if isinstance(members, dict):
        for member_id, info in sorted(members.items(), key=lambda kv: str(kv[0])):
            if isinstance(info, dict):
                state = "reachable" if info.get("reachable") else "unreachable"
                lines.append(f"  member {member_id} at {info.get('address')}: {state}")
    return lines


# --- running ------------------------------------------------------------------


def _run(args: argparse.Namespace, out: IO[str], out_bytes: IO[bytes],
         stdin: IO[bytes], make_client: Callable[..., Client]) -> int:
    command = getattr(args, "kv_command", None)
    if command not in COMMANDS:
        raise _Usage(f"unknown key-value command {command!r}")
    endpoints = _endpoints(args)
    tls = _tls(args, endpoints)
    timeout = _timeout(args)
    as_json = bool(args.json)
    if command in ("put", "get", "del", "cas"):
        _key(args.key)
    conditions: dict[str, Any] = {}
    if command in ("put", "del"):
        conditions = {
            "prev_value": None if args.prev_value is None else os.fsencode(args.prev_value),
            "prev_index": _non_negative("--prev-index", args.prev_index),
            "prev_exist": _bool("--prev-exist", args.prev_exist),
        }
    consistency = _consistency(args.consistency) if command in ("get", "keys") else ""
    limit = _non_negative("--limit", args.limit) if command == "keys" else None
    if command == "keys" and args.prefix:
        _key(args.prefix, "prefix")
    value = _value(args.value, stdin) if command == "put" else b""

    if command == "status":
        return _status(endpoints, timeout, as_json, out, make_client, tls)
    # Per attempt, a little less than the whole budget; the whole is retry_timeout.
    with make_client(endpoints, timeout=timeout, connect_timeout=min(2.0, timeout),
                     retry_timeout=timeout, **tls) as client:
        if command == "put":
            _print_index(out, as_json, args.key, client.put(args.key, value, **conditions))
        elif command == "del":
            _print_index(out, as_json, args.key, client.delete(args.key, **conditions))
        elif command == "cas":
            index = client.cas(args.key, os.fsencode(args.expected), os.fsencode(args.new))
            _print_index(out, as_json, args.key, index)
        elif command == "get":
            data, index = client.get(args.key, consistency=consistency)
            if as_json:
                _print_json(out, {"key": args.key, "index": index, **_value_json(data)})
            else:
                # The value exactly as stored, so scripts can pipe it; on a terminal a
                # newline after it, so the prompt does not run on after the value.
                out.flush()
                out_bytes.write(data)
                if not data.endswith(b"\n") and _is_terminal(out_bytes):
                    out_bytes.write(b"\n")
                out_bytes.flush()
        elif command == "keys":
            items = client.keys(args.prefix, None if limit == 0 else limit,
                                consistency=consistency)
            if as_json:
                _print_json(out, [{"key": k, "index": i} for k, i in items])
            else:
                for key, index in items:
                    out.write(f"{_escaped(key)}\t{index}\n")
    return EXIT_OK


def _is_terminal(stream: IO[bytes]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _status_of(endpoint: str, timeout: float, make_client: Callable[..., Client],
               tls: dict[str, Any]) -> dict[str, Any] | str:
    """The status the node at `endpoint` reports, or why there is none (one line)."""
    try:
        with make_client([endpoint], timeout=timeout, connect_timeout=min(2.0, timeout),
                         retry_timeout=min(2.0, timeout), **tls) as client:
            return client.status()
    except PnyxError as exc:
        return _one_line(exc.message)


def _status(endpoints: list[str], timeout: float, as_json: bool, out: IO[str],
            make_client: Callable[..., Client], tls: dict[str, Any]) -> int:
    # Each endpoint on its own: a client over all of them would show whichever
    # node it happened to reach, a different one each time.
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        answers = list(pool.map(lambda ep: _status_of(ep, timeout, make_client, tls),
                                endpoints))
    if all(isinstance(a, str) for a in answers):
        if len(endpoints) == 1:
            raise Unavailable(str(answers[0]))
        raise Unavailable("no node answered: " + "; ".join(
            f"{ep}: {why}" for ep, why in zip(endpoints, answers, strict=True)))
    for endpoint, answer in zip(endpoints, answers, strict=True):
        if as_json:
            _print_json(out, {"endpoint": endpoint, **answer} if isinstance(answer, dict)
                        else {"endpoint": endpoint, "error": answer})
    if not as_json:
        if len(endpoints) == 1 and isinstance(answers[0], dict):
            out.write("\n".join(_describe_status(answers[0])) + "\n")
        else:
            for endpoint, answer in zip(endpoints, answers, strict=True):
                out.write(f"{endpoint}  {_status_line(answer)}\n")
    return EXIT_OK


def _status_line(answer: dict[str, Any] | str) -> str:
    if isinstance(answer, str):
        return f"no answer: {answer}"
    return (f"node {answer.get('id')}: {answer.get('role')}, leader {answer.get('leader')}, "
            f"ballot {answer.get('ballot')}, commit index {answer.get('commit_index')}, "
            f"applied index {answer.get('applied_index')}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None,
        stderr: IO[str] | None = None, stdin: IO[bytes] | None = None,
        stdout_bytes: IO[bytes] | None = None,
        make_client: Callable[..., Client] = Client) -> int:
    """Carry out one command; returns the exit status (0 done, 1 failed, 2 bad flags)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    out_bytes = stdout_bytes if stdout_bytes is not None else getattr(out, "buffer", None)
    if out_bytes is None:
        raise TypeError("stdout has no binary buffer: pass stdout_bytes")
    inp = stdin if stdin is not None else sys.stdin.buffer
    prog = f"pnyx {getattr(args, 'kv_command', '') or ''}".strip()
    try:
        return _run(args, out, out_bytes, inp, make_client)
    except _Usage as exc:
        err.write(f"{prog}: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except PreconditionFailed as exc:
        err.write(f"{prog}: precondition failed: the key is at index {exc.index}\n")
        return EXIT_FAILED
    except (PnyxError, ValueError, TypeError, OSError) as exc:
        return report_failure(prog, exc, err)


def report_failure(prog: str, exc: Exception, err: IO[str]) -> int:
    """The one way a client command reports what failed: one line on `err`; the exit
    status (1 failed, 2 an argument refused)."""
    if isinstance(exc, Unavailable):
        err.write(f"{prog}: unavailable: {_one_line(exc.message)}\n")
        return EXIT_FAILED
    if isinstance(exc, PnyxError):
        what = exc.code.replace("_", " ") if exc.code else "error"
        err.write(f"{prog}: {what}: {_one_line(exc.message)}\n")
        return EXIT_FAILED
    err.write(f"{prog}: {_one_line(str(exc))}\n")
    # ValueError, TypeError: arguments the client refuses that the flag checks let
    # through. OSError: reading input, writing output or reaching a node failed.
    return EXIT_USAGE if isinstance(exc, ValueError | TypeError) else EXIT_FAILED

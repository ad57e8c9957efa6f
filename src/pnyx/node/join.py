"""Joining a running cluster (`pnyx serve --join`): the node's side, before it starts.

A node started with `--join ENDPOINTS` instead of `--cluster` asks a member (at
its HTTP endpoint) to add it, `POST /v1/members {id, peer, http, incarnation}`,
and learns from the answer what `--cluster` would have said: the cluster id and
the first configuration's members and addresses (`genesis`), plus the members
of the configuration now and their addresses (its first peers). This module
owns that exchange and what it leaves in the data directory; `prepare` is the
one entry, and returns the `NodeConfig` to start with.

**Why a joined node votes without asking.** A member that starts with an empty
disk normally asks the others whether the cluster has history, and if it has,
never votes again under its id (`pnyx.protocol.multipaxos.standing`): it may
have voted before and forgotten it. A joined node is a new id, added by the
cluster as a learner: it never voted under that id, so its standing is made
VOTER before it starts (it votes only once a configuration makes it a voter).
What makes this safe is that the id is *new*, and the cluster is the one that
knows: each joining process draws a random `incarnation`, durable in
`join.json` before it asks, and the cluster answers a join of an id that is a
member already under another incarnation with "already a member". That is a
node that joined, may have voted, and lost its data: it is refused, and the
operator is told to replace it (`pnyx member replace OLD NEW`: a new id). A
retry of the same join (the answer was lost, the process restarted) has the
same incarnation and is answered as if added. A member added beforehand by an
operator (`pnyx member add`, which draws an incarnation) is started with
`--incarnation` set to it: the operator vouches that no process ran under it.
`--join-as-learner` asks to stay a learner until promoted (`pnyx member
replace`).

What stays in the data directory, in order:

1. `join.json` `{"id", "incarnation"}`, fsynced before the first request;
2. once added, the answer in `join.json` (`cluster_id`, `genesis`, `peers`);
3. the log store, made with the cluster id, standing VOTER, and the first
   configuration recorded as its member list (`check_members`): the join is
   complete from here on, and `--join` is ignored at later starts (the store
   says which cluster, and its member list the first configuration);
4. `"complete": true` in `join.json`: with it and no log store, the log was
   lost, and the node refuses to start (it must not join again as if new).

A crash anywhere before 3 leaves a join that is asked again, under the same
incarnation. A data directory of another cluster (or another node) is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from pnyx.node.config import Address, ConfigError, NodeConfig

log = logging.getLogger("pnyx.join")

JOIN_FILE: Final = "join.json"
STORE_FILE: Final = "pnyx.db"
JOIN_TIMEOUT: Final = 60.0  # seconds of asking before giving up
REQUEST_TIMEOUT: Final = 10.0  # one request (the member waits for the change to be chosen)
_WILDCARD: Final = frozenset({"", "0.0.0.0", "::", "*"})


class JoinError(Exception):
    """The node cannot join (or must not start): one line for the operator."""


@dataclasses.dataclass(frozen=True)
class Joined:
    """What a node that joined starts with: its configuration (`members` the first
    configuration, `cluster_id` the cluster's) and the peers the answer named."""

    config: NodeConfig
    peers: dict[int, Address]
    incarnation: int


def prepare(config: NodeConfig, *, cluster_id_given: bool = False,
            timeout: float = JOIN_TIMEOUT) -> Joined:
    """Join the cluster at `config.join` (or find the join done earlier), and return the
    configuration to start with. `cluster_id_given`: `--cluster-id` was set, and the
    cluster must have that id. Raises `JoinError`."""
    data_dir = config.data_dir
    store = data_dir / STORE_FILE
    state = read_state(data_dir)
    if state is not None and state.get("id") != config.node_id:
        raise JoinError(f"{data_dir / JOIN_FILE} is node {state.get('id')}'s join, not node "
                        f"{config.node_id}'s: use that node's --id, or another data directory")
    expected = config.cluster_id if cluster_id_given else None
    if store.exists():
        node_id, cluster_id, genesis = _peek(store)
        if node_id != config.node_id:
            raise JoinError(f"{store}: this data belongs to node {node_id}, not to node "
                            f"{config.node_id}")
        if expected is not None and cluster_id != expected:
            raise JoinError(f"{store}: this data belongs to cluster {cluster_id!r}, not to "
                            f"{expected!r}")
        if genesis:
            # Joined before (or a member of the first configuration): the data says
            # which cluster, and what its first configuration was.
            _check_cluster(config, cluster_id)
            log.info("node %s: %s holds the data of cluster %r: --join is ignored, the "
                     "node restarts from its data", config.node_id, data_dir, cluster_id)
            peers = _addresses((state or {}).get("peers") or {}, "join.json peers")
            incarnation = int((state or {}).get("incarnation") or 0)
            return Joined(_configured(config, cluster_id, genesis), peers, incarnation)
        if state is None:
            raise JoinError(f"{store} exists but records no members and no join: it was not "
                            "made by `pnyx serve --join`; start the node with --cluster")
        expected = cluster_id  # a join interrupted after the store was made
    elif state is not None and state.get("complete"):
        raise JoinError(
            f"{data_dir} records that node {config.node_id} joined cluster "
            f"{state.get('cluster_id')!r}, but its log ({store}) is gone: a node that lost "
            f"its log must not vote again under its id. Remove it and add a new one: "
            f"`pnyx member replace {config.node_id} NEW_ID` (README: membership)")
    if state is None:
        # An incarnation given is a member added beforehand (`pnyx member add`) that this
        # process now claims: the operator says no process ran under it before.
        state = {"id": config.node_id, "incarnation": config.incarnation
                 or random.SystemRandom().randrange(1, 1 << 62)}
        write_state(data_dir, state)
    elif config.incarnation and config.incarnation != state["incarnation"]:
        raise JoinError(f"{data_dir / JOIN_FILE} holds a join under incarnation "
                        f"{state['incarnation']}, not {config.incarnation}: this data "
                        "directory is another join's")
    incarnation = int(state["incarnation"])
    answer = ask(config, incarnation, expected, timeout)
    cluster_id = str(answer["cluster_id"])
    genesis = _addresses(answer.get("genesis") or {}, "the answer's genesis")
    if not genesis:
        raise JoinError("the cluster's answer names no first configuration (genesis)")
    if config.node_id in genesis:
        raise JoinError(f"node {config.node_id} is a member of the cluster's first "
                        "configuration: start it with --cluster, not --join")
    peers = {int(m["id"]): Address.parse(str(m["peer"]), f"member {m['id']}'s peer")
             for view in (answer, *answer.get("pending", ()))
             for m in view.get("members", ()) if m.get("peer") and m["id"] != config.node_id}
    state.update(cluster_id=cluster_id, genesis={str(i): str(a) for i, a in genesis.items()},
                 peers={str(i): str(a) for i, a in peers.items()})
    write_state(data_dir, state)
    joined = _configured(config, cluster_id, {i: str(a) for i, a in genesis.items()})
    _make_store(joined)
    state["complete"] = True
    write_state(data_dir, state)
    log.info("node %s joined cluster %r (incarnation %s): a learner until it has caught up",
             config.node_id, cluster_id, incarnation)
    return Joined(joined, peers, incarnation)


def ask(config: NodeConfig, incarnation: int, expected: str | None,
        timeout: float) -> dict[str, Any]:
    """Ask the members at `config.join`, in turn, to add this node, until one says it
    was (200); retried with backoff for up to `timeout` seconds while no member can
    answer or the leader refuses for now (409 refused: no live quorum after it). A
    member that says no for good (400: already a member, an id used before; another
    cluster) ends it. Returns the answer."""
    fields: dict[str, Any] = {"id": config.node_id, "peer": str(config.peer_address),
                              "incarnation": incarnation, "learner": config.join_learner}
    if config.http is not None:
        fields["http"] = _http_address(config)
    body = json.dumps(fields).encode()
    deadline = time.monotonic() + timeout
    pause = 0.2
    why: dict[str, str] = {}  # endpoint -> the last thing it said (or why it did not)
    while True:
        for endpoint in config.join:
            url = f"http://{endpoint}/v1/members"
            if expected is not None:
                status, view = _call("GET", url, None)
                if status == 200 and view.get("cluster_id") not in (None, expected):
                    raise JoinError(f"{endpoint} is a member of cluster "
                                    f"{view['cluster_id']!r}, not of {expected!r}: this "
                                    "node's data (or --cluster-id) is another cluster's")
            status, answer = _call("POST", url, body)
            message = _message(answer)
            if status == 200:
                cluster_id = answer.get("cluster_id")
                if not isinstance(cluster_id, str):
                    raise JoinError(f"{endpoint} answered without a cluster id: is it pnyx?")
                if expected is not None and cluster_id != expected:
                    raise JoinError(f"{endpoint} is a member of cluster {cluster_id!r}, not "
                                    f"of {expected!r}: this node's data (or --cluster-id) "
                                    "is another cluster's")
                return answer
            if status == 400 and "already a member" in message:
                raise JoinError(
                    f"{endpoint}: {message}, under another incarnation: a node {config.node_id} "
                    "joined before and may have voted, and this data directory does not hold "
                    "its log. A node that lost its data must not vote again under its old id: "
                    f"replace it with a new one (`pnyx member replace {config.node_id} "
                    "NEW_ID`, then start NEW_ID with --join)")
            if status in (400, 404, 413):
                raise JoinError(f"{endpoint} refused to add node {config.node_id}: "
                                f"{message or f'HTTP {status}'}")
            why[str(endpoint)] = (f"HTTP {status}: {message}" if status else message)
        if time.monotonic() + pause > deadline:
            raise JoinError(f"no member added node {config.node_id} within {timeout:g} s: "
                            + "; ".join(f"{e}: {w}" for e, w in why.items()))
        log.info("node %s: not added yet (%s); asking again in %.1f s", config.node_id,
                 "; ".join(f"{e}: {w}" for e, w in why.items()), pause)
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


# ------------------------------------------------------------------ the state file


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """What `join.json` holds (None: no join was started here)."""
    path = data_dir / JOIN_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JoinError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        state = json.loads(text)
    except ValueError:
        raise JoinError(f"{path} is damaged (not JSON): the join's record cannot be "
                        "trusted; replace the node (`pnyx member replace`)") from None
    if not isinstance(state, dict) or not isinstance(state.get("incarnation"), int):
        raise JoinError(f"{path} is damaged (no incarnation): replace the node")
    return state


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Replace `join.json` durably (written beside, fsynced, renamed, directory fsynced)."""
    path = data_dir / JOIN_FILE
    tmp = path.with_name(JOIN_FILE + ".tmp")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(state, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise JoinError(f"cannot write {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ helpers


def _configured(config: NodeConfig, cluster_id: str, genesis: dict[int, str]) -> NodeConfig:
    try:
        return dataclasses.replace(config, cluster_id=cluster_id, members={
            i: Address.parse(a, f"address of member {i}") for i, a in genesis.items()})
    except ConfigError as exc:
        raise JoinError(f"the cluster's first configuration cannot be used here: {exc}"
                        ) from None


def _make_store(config: NodeConfig) -> None:
    """The log store of a node that joined: the cluster's id, standing VOTER (a new id
    never voted: see the module's docstring), the first configuration as its members."""
    from pnyx.protocol.multipaxos.records import Standing, StandingRecord
    from pnyx.storage.log_store import SqliteLogStore, StoreError

    try:
        store = SqliteLogStore.open(config.data_dir / STORE_FILE, node_id=config.node_id,
                                    cluster_id=config.cluster_id, fsync=config.fsync)
    except StoreError as exc:
        raise JoinError(str(exc)) from None
    try:
        durable = store.load()
        if durable.standing is not Standing.VOTER:
            if durable.last_round or durable.accepted or durable.chosen:
                raise JoinError(f"{store.path} has history but was never completed as a "
                                "join: replace the node (`pnyx member replace`)")
            store.append([StandingRecord(Standing.VOTER)])
        store.check_members({i: str(a) for i, a in config.members.items()})
    except StoreError as exc:
        raise JoinError(str(exc)) from None
    finally:
        store.close()


def _peek(store: Path) -> tuple[int, str, dict[int, str]]:
    from pnyx.storage.log_store import SqliteLogStore, StoreError

    try:
        return SqliteLogStore.peek(store)
    except StoreError as exc:
        raise JoinError(str(exc)) from None


def _check_cluster(config: NodeConfig, cluster_id: str) -> None:
    """At a restart with data: refuse if a member at `--join` answers for another
    cluster (best effort, one quick look: the members need not be up for a restart)."""
    for endpoint in config.join:
        status, view = _call("GET", f"http://{endpoint}/v1/members", None, timeout=1.0)
        if status == 200:
            other = view.get("cluster_id")
            if isinstance(other, str) and other != cluster_id:
                raise JoinError(f"{config.data_dir} holds the data of cluster {cluster_id!r}, "
                                f"but {endpoint} is a member of cluster {other!r}")
            return


def _addresses(raw: Any, what: str) -> dict[int, Address]:
    if not isinstance(raw, dict):
        raise JoinError(f"{what} is not an object of id -> host:port")
    try:
        return {int(i): Address.parse(str(a), f"{what}: member {i}") for i, a in raw.items()}
    except (ValueError, ConfigError) as exc:
        raise JoinError(f"{what}: {exc}") from None


def _http_address(config: NodeConfig) -> str:
    """Where this node serves HTTP, as the members should list it."""
    assert config.http is not None
    host = config.http.host
    if host in _WILDCARD:
        host = config.peer_address.host
    return str(Address(host, config.http.port))


def _call(method: str, url: str, body: bytes | None,
          timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """One HTTP request: (status, JSON body); (0, {"error": why}) if none came."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, b""
        with contextlib.suppress(OSError):
            raw = exc.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, {"error": {"message": f"no answer ({reason})"}}
    try:
        data = json.loads(raw)
    except ValueError:
        data = {}
    return status, data if isinstance(data, dict) else {}


def _message(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "")
    return str(error or "")

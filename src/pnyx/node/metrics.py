"""A node's Prometheus metrics: what is counted, and the calls that count it.

`Metrics` owns one `prometheus_client.CollectorRegistry` per node (never the
process-global default registry), so several nodes in one process, as in the
tests or `pnyx cluster`, each report only their own numbers. The node's driver
(`pnyx.node.driver`) and the HTTP layer call the methods below; `render` gives the text that
`GET /metrics` serves.

Who calls what (call: caller; metric):

- `proposed(n)`: the node, per client command submitted to it;
  `pnyx_proposals_total`.
- `observe_batch(n)`: the node, per slot it learns chosen (its commands);
  `pnyx_batch_size`.
- `chosen(slots, commands)`: the node, as it learns slots chosen;
  `pnyx_chosen_slots_total`, `pnyx_chosen_commands_total`. Neither counts the
  slots a restarted node replays from its disk: they were counted when chosen.
- `observe_commit_latency(seconds)`: the node, per command, submit to applied;
  `pnyx_commit_latency_seconds`.
- `observe_commit(seconds, records)`: the node, per group commit (one fsync);
  `pnyx_fsync_seconds`, `pnyx_fsync_records`.
- `election_started()`: the node, when it runs phase 1; `pnyx_elections_total`.
- `leader_changed()`: the node, when the leader it knows changes;
  `pnyx_leader_changes_total`.
- `set_role(role)`: the node, on every role change; `pnyx_role{role}` (1 for
  the current role, 0 for the others).
- `peer_state(peer_id, up)`: the node's transport, on connect and disconnect;
  `pnyx_peer_up{peer}`.
- `request(route, method, status, seconds)`: the HTTP layer, per request;
  `pnyx_http_requests_total`, `pnyx_http_request_seconds`.
- `snapshots`: set by the node to its `snapshot_status`, read at each scrape (so
  nothing is counted on the hot path): `pnyx_snapshot_slot`, `pnyx_snapshot_bytes`,
  `pnyx_snapshot_seconds` (the last one's write), `pnyx_snapshot_failures_total`,
  `pnyx_log_compacted_slot`, `pnyx_log_slots_in_memory`,
  `pnyx_snapshot_transfers_serving`, `pnyx_snapshot_fetch_bytes` and
  `pnyx_snapshot_fetch_total_bytes` (0 when none is being fetched),
  `pnyx_snapshot_installs_total`.
- `membership`: set by the node to its `membership_metrics`, read at each scrape:
  `pnyx_config_version` and `pnyx_config_start_slot` (the configuration in force),
  `pnyx_members{role}` (voters and learners in it), `pnyx_configs_pending`
  (configurations chosen, not yet in force), and on the leader
  `pnyx_learner_lag_slots{node}` (how far each learner's applied slot is behind
  the leader's commit: its catch-up).

This module imports nothing from pnyx: the node owns it, and the API layers
above it only feed and render it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

ROLES: Final = ("follower", "candidate", "leader")

# From one fsync on a fast disk (~100 µs) to a client giving up (10 s).
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Powers of two up to the default max_batch (256) and beyond.
_COUNT_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _Buckets:
    """One histogram's counts, kept as plain numbers (see `_PerCommand`)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, text: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return HistogramMetricFamily(name, text, buckets=buckets, sum_value=self.total)


class _PerCommand:
    """The metrics counted once per client command, chosen slot or group commit, without
    a lock.

    prometheus-client's counters and histograms take a lock per call, which at
    tens of thousands of commands a second is a measurable share of a node's
    time (a follower observed two histograms per group commit and one per slot).
    These are counted only on the node's event loop, and rendered there too, so
    plain numbers suffice; a collector turns them into the same series the
    library's own types would.
    """

    def __init__(self) -> None:
        self.proposals = 0
        self.chosen_slots = 0
        self.chosen_commands = 0
        self.latency = _Buckets(_LATENCY_BUCKETS)
        self.batch = _Buckets(_COUNT_BUCKETS)
        self.fsync = _Buckets(_LATENCY_BUCKETS)
        self.fsync_records = _Buckets(_COUNT_BUCKETS)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("pnyx_proposals", "Client commands submitted to this node.",
                                  value=self.proposals)
        yield CounterMetricFamily("pnyx_chosen_slots", "Log slots this node learned chosen.",
                                  value=self.chosen_slots)
        yield CounterMetricFamily(
            "pnyx_chosen_commands", "Client commands in the slots this node learned chosen.",
            value=self.chosen_commands)
        yield self.latency.family("pnyx_commit_latency_seconds",
                                  "Time from a command's submission to its being applied.")
        yield self.fsync.family("pnyx_fsync_seconds",
                                "Duration of one group commit (write and fsync).")
        yield self.fsync_records.family("pnyx_fsync_records",
                                        "Records made durable by one group commit.")
        yield self.batch.family("pnyx_batch_size",
                                "Client commands per slot this node learned chosen.")


_SNAPSHOT_GAUGES: Final = (
    ("pnyx_snapshot_slot", "slot", "Slot of the newest durable snapshot (0: none)."),
    ("pnyx_snapshot_bytes", "bytes", "Size of the newest durable snapshot file."),
    ("pnyx_snapshot_seconds", "last_seconds", "How long the last snapshot took to write."),
    ("pnyx_log_compacted_slot", "compacted_slot",
     "Slots up to this one are compacted: held only by a snapshot."),
    ("pnyx_log_slots_in_memory", "log_slots_in_memory", "Chosen slots held in memory."),
    ("pnyx_snapshot_transfers_serving", "serving",
     "Snapshots peers are fetching from this node."),
)


class _Snapshots:
    """Gauges read from the node's `snapshot_status` when scraped."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, object]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        status = self.source()
        for name, key, text in _SNAPSHOT_GAUGES:
            yield GaugeMetricFamily(name, text, value=float(status.get(key) or 0))  # type: ignore[arg-type]
        fetching = status.get("fetching")
        done, total = ((fetching.get("bytes", 0), fetching.get("of", 0))  # type: ignore[attr-defined]
                       if isinstance(fetching, dict) else (0, 0))
        yield GaugeMetricFamily("pnyx_snapshot_fetch_bytes",
                                "Bytes of the snapshot being fetched staged so far.",
                                value=float(done))
        yield GaugeMetricFamily("pnyx_snapshot_fetch_total_bytes",
                                "Size of the snapshot being fetched (0: none).",
                                value=float(total))
        yield CounterMetricFamily("pnyx_snapshot_failures",
                                  "Snapshots that could not be written.",
                                  value=float(status.get("failures") or 0))  # type: ignore[arg-type]
        yield CounterMetricFamily("pnyx_snapshot_installs",
                                  "Snapshots fetched from a peer and installed.",
                                  value=float(status.get("installed") or 0))  # type: ignore[arg-type]


class _Membership:
    """Gauges read from the node's `membership_metrics` when scraped."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, object]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        status = self.source()
        yield GaugeMetricFamily("pnyx_config_version",
                                "Version of the configuration in force (0: the first).",
                                value=float(status.get("version") or 0))  # type: ignore[arg-type]
        yield GaugeMetricFamily("pnyx_config_start_slot",
                                "First slot the configuration in force governs.",
                                value=float(status.get("start") or 0))  # type: ignore[arg-type]
        members = GaugeMetricFamily("pnyx_members",
                                    "Members of the configuration in force, by role.",
                                    labels=["role"])
        for role in ("voter", "learner"):
            members.add_metric([role], float(status.get(f"{role}s") or 0))  # type: ignore[arg-type]
        yield members
        yield GaugeMetricFamily("pnyx_configs_pending",
                                "Configurations chosen that are not in force yet.",
                                value=float(status.get("pending") or 0))  # type: ignore[arg-type]
        lag = GaugeMetricFamily("pnyx_learner_lag_slots",
                                "Leader only: slots a learner's applied slot is behind the "
                                "leader's commit.", labels=["node"])
        for node, slots in sorted((status.get("lag") or {}).items()):  # type: ignore[attr-defined]
            lag.add_metric([str(node)], float(slots))
        yield lag


class Metrics:
    """Counters, histograms and gauges of one node, in a registry of their own."""

    content_type: Final = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._per_command = _PerCommand()
        r.register(self._per_command)
        self._snapshots = _Snapshots()
        r.register(self._snapshots)  # type: ignore[arg-type]
        self._membership = _Membership()
        r.register(self._membership)  # type: ignore[arg-type]
        self._elections = Counter(
            "pnyx_elections", "Elections (phase 1 runs) this node started.", registry=r)
        self._leader_changes = Counter(
            "pnyx_leader_changes", "Times the leader this node knows changed.", registry=r)
        self._requests = Counter(
            "pnyx_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r)
        self._request_seconds = Histogram(
            "pnyx_http_request_seconds", "HTTP request handling time by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self._peer_up = Gauge(
            "pnyx_peer_up", "1 if the connection to a peer is up, else 0.",
            ["peer"], registry=r)
        self._role = Gauge(
            "pnyx_role", "1 for this node's current role, 0 for the others.",
            ["role"], registry=r)
        self.set_role("follower")

    # -- the node's calls --

    def proposed(self, commands: int = 1) -> None:
        self._per_command.proposals += commands

    def observe_batch(self, commands: int) -> None:
        self._per_command.batch.observe(commands)

    def chosen(self, slots: int, commands: int) -> None:
        hot = self._per_command
        hot.chosen_slots += slots
        hot.chosen_commands += commands

    def observe_commit_latency(self, seconds: float) -> None:
        self._per_command.latency.observe(seconds)

    def observe_commit(self, seconds: float, records: int) -> None:
        """One group commit: how long it took to make `records` records durable."""
        hot = self._per_command
        hot.fsync.observe(seconds)
        hot.fsync_records.observe(records)

    def election_started(self) -> None:
        self._elections.inc()

    def leader_changed(self) -> None:
        self._leader_changes.inc()

    def set_role(self, role: str) -> None:
        """`role` is one of `ROLES` (an enum's `.value` works); anything else is a bug."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        for name in ROLES:
            self._role.labels(name).set(1 if name == role else 0)

    def peer_state(self, peer_id: int, up: bool) -> None:
        self._peer_up.labels(str(peer_id)).set(1 if up else 0)

    @property
    def snapshots(self) -> Callable[[], dict[str, object]] | None:
        return self._snapshots.source

    @snapshots.setter
    def snapshots(self, source: Callable[[], dict[str, object]] | None) -> None:
        self._snapshots.source = source

    @property
    def membership(self) -> Callable[[], dict[str, object]] | None:
        return self._membership.source

    @membership.setter
    def membership(self, source: Callable[[], dict[str, object]] | None) -> None:
        self._membership.source = source

    # -- the HTTP layer's call --

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """`route` is the route's template (never the raw path: that would be unbounded)."""
        self._requests.labels(route, method, str(status)).inc()
        self._request_seconds.labels(route).observe(seconds)

    def request_recorder(self, route: str, method: str, status: int,
                         ) -> Callable[[float], None]:
        """`request` for one set of labels, looked up once: a server that answers the same
        few routes tens of thousands of times a second keeps it (the lookup costs more
        than the count)."""
        counter = self._requests.labels(route, method, str(status))
        seconds = self._request_seconds.labels(route)

        def record(took: float) -> None:
            counter.inc()
            seconds.observe(took)

        return record

    def render(self) -> bytes:
        """Everything, in the Prometheus text exposition format."""
        return generate_latest(self.registry)

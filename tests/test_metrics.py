"""The node's metrics: the per-command ones, counted without a lock, render exactly as
prometheus-client's own counter and histogram would."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pnyx.node.metrics import _COUNT_BUCKETS, _LATENCY_BUCKETS, Metrics

OBSERVATIONS = [0.00005, 0.0001, 0.00010001, 0.003, 0.005, 0.7, 10.0, 20.0, 0.0]


def _series(text: bytes, name: str) -> dict[str, float]:
    """`{series (name and labels): value}` for one metric family, `_created` left out."""
    found = {}
    for line in text.decode().splitlines():
        if line.startswith(name) and "_created" not in line:
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


def test_commit_latency_histogram_renders_as_prometheus_client_histogram_would() -> None:
    reference = CollectorRegistry()
    histogram = Histogram("pnyx_commit_latency_seconds", "x", buckets=_LATENCY_BUCKETS,
                          registry=reference)
    metrics = Metrics()
    for seconds in OBSERVATIONS:
        histogram.observe(seconds)
        metrics.observe_commit_latency(seconds)
    ours = _series(metrics.render(), "pnyx_commit_latency_seconds")
    theirs = _series(generate_latest(reference), "pnyx_commit_latency_seconds")
    assert ours == theirs
    # A value on a bucket's bound counts in that bucket (le = "less or equal").
    assert ours['pnyx_commit_latency_seconds_bucket{le="0.0001"}'] == 3
    assert ours['pnyx_commit_latency_seconds_bucket{le="+Inf"}'] == len(OBSERVATIONS)


def test_batch_and_group_commit_histograms_render_as_prometheus_client_histograms_would(
) -> None:
    reference = CollectorRegistry()
    batch = Histogram("pnyx_batch_size", "x", buckets=_COUNT_BUCKETS, registry=reference)
    fsync = Histogram("pnyx_fsync_seconds", "x", buckets=_LATENCY_BUCKETS, registry=reference)
    records = Histogram("pnyx_fsync_records", "x", buckets=_COUNT_BUCKETS, registry=reference)
    metrics = Metrics()
    for n in (1, 2, 3, 256, 257, 5000):
        batch.observe(n)
        metrics.observe_batch(n)
    for seconds, n in zip(OBSERVATIONS, (1, 4, 4, 9, 100, 1, 2, 3, 4096), strict=True):
        fsync.observe(seconds)
        records.observe(n)
        metrics.observe_commit(seconds, n)
    ours, theirs = metrics.render(), generate_latest(reference)
    for name in ("pnyx_batch_size", "pnyx_fsync_seconds", "pnyx_fsync_records"):
        assert _series(ours, name) == _series(theirs, name), name
    assert _series(ours, "pnyx_batch_size")['pnyx_batch_size_bucket{le="256.0"}'] == 4
    assert _series(ours, "pnyx_fsync_records")["pnyx_fsync_records_sum"] == 4220


def test_proposals_counter_renders_as_prometheus_client_counter_would() -> None:
    reference = CollectorRegistry()
    counter = Counter("pnyx_proposals", "x", registry=reference)
    metrics = Metrics()
    for n in (1, 1, 5):
        counter.inc(n)
        metrics.proposed(n)
    text = metrics.render()
    assert _series(text, "pnyx_proposals") == _series(generate_latest(reference),
                                                      "pnyx_proposals")
    assert re.search(rb"^# TYPE pnyx_proposals_total counter$", text, re.M)
    assert _series(text, "pnyx_proposals") == {"pnyx_proposals_total": 7.0}


def test_chosen_counters_render_as_prometheus_client_counters_would() -> None:
    reference = CollectorRegistry()
    slots = Counter("pnyx_chosen_slots", "x", registry=reference)
    commands = Counter("pnyx_chosen_commands", "x", registry=reference)
    metrics = Metrics()
    for n_slots, n_commands in ((1, 3), (2, 40)):
        slots.inc(n_slots)
        commands.inc(n_commands)
        metrics.chosen(n_slots, n_commands)
    text, theirs = metrics.render(), generate_latest(reference)
    for name in ("pnyx_chosen_slots", "pnyx_chosen_commands"):
        assert _series(text, name) == _series(theirs, name)
    assert _series(text, "pnyx_chosen_commands") == {"pnyx_chosen_commands_total": 43.0}


def test_snapshot_gauges_are_read_from_the_node_when_scraped() -> None:
    """Snapshot slot, size, write time, compacted floor, log in memory and transfers:
    read from the node's status at each scrape, never counted on the hot path."""
    from pnyx.node.metrics import Metrics
    status: dict[str, object] = {
        "slot": 1200, "bytes": 4096, "last_seconds": 0.25, "compacted_slot": 700,
        "log_slots_in_memory": 520, "serving": 1, "failures": 2, "installed": 3,
        "fetching": {"slot": 1500, "from": 2, "bytes": 100, "of": 400},
    }
    m = Metrics()
    assert b"pnyx_snapshot_slot" not in m.render()  # no node, no gauges
    m.snapshots = lambda: status
    text = m.render().decode()
    for line in ("pnyx_snapshot_slot 1200.0", "pnyx_snapshot_bytes 4096.0",
                 "pnyx_snapshot_seconds 0.25", "pnyx_log_compacted_slot 700.0",
                 "pnyx_log_slots_in_memory 520.0", "pnyx_snapshot_transfers_serving 1.0",
                 "pnyx_snapshot_fetch_bytes 100.0", "pnyx_snapshot_fetch_total_bytes 400.0",
                 "pnyx_snapshot_failures_total 2.0", "pnyx_snapshot_installs_total 3.0"):
        assert line in text, line
    status["slot"] = 1300
    status["fetching"] = None
    text = m.render().decode()
    assert "pnyx_snapshot_slot 1300.0" in text
    assert "pnyx_snapshot_fetch_total_bytes 0.0" in text

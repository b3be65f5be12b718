"""Prometheus metrics (server/metrics.py): each Metrics has its own registry, so two relays in
one process do not share counts, and the exposition carries only the labels it was given
(route templates and codes, never a raw path or id)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from server.metrics import CONTENT_TYPE, Metrics, ProcessHistogram


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(m.render().decode())
            for s in family.samples}


def test_two_instances_count_apart() -> None:
    one, two = Metrics(), Metrics()
    one.http_requests.labels("/v1/threads", "POST", "201").inc()
    one.messages_accepted.inc(3)
    assert one.registry.get_sample_value("lightbox_messages_accepted_total") == 3
    assert two.registry.get_sample_value("lightbox_messages_accepted_total") == 0
    assert two.registry.get_sample_value("lightbox_http_requests_total", {
        "route": "/v1/threads", "method": "POST", "status": "201"}) is None


def test_the_exposition_names_every_instrument_with_its_labels_only() -> None:
    m = Metrics()
    m.http_requests.labels("/v1/threads/{thread_id}", "GET", "200").inc()
    m.http_latency.labels("/v1/threads/{thread_id}", "GET").observe(0.004)
    m.http_errors.labels("not_found").inc()
    m.ws_rejections.labels("token_expired").inc(2)
    m.ws_connections.set(4)
    m.queue_depth.set(7)
    got = samples(m)
    assert got[("lightbox_http_requests_total", (
        ("method", "GET"), ("route", "/v1/threads/{thread_id}"), ("status", "200")))] == 1
    assert got[("lightbox_http_request_duration_seconds_bucket", (
        ("le", "0.005"), ("method", "GET"), ("route", "/v1/threads/{thread_id}")))] == 1
    assert got[("lightbox_http_request_duration_seconds_bucket", (
        ("le", "0.0025"), ("method", "GET"), ("route", "/v1/threads/{thread_id}")))] == 0
    assert got[("lightbox_http_errors_total", (("code", "not_found"),))] == 1
    assert got[("lightbox_ws_rejections_total", (("code", "token_expired"),))] == 2
    assert got[("lightbox_ws_connections", ())] == 4
    assert got[("lightbox_queue_depth", ())] == 7


def test_every_instrument_is_described_even_before_its_first_count() -> None:
    text = Metrics().render().decode()
    for name in ("lightbox_http_requests_total", "lightbox_http_request_duration_seconds",
                 "lightbox_http_errors_total", "lightbox_audit_events_total",
                 "lightbox_ws_connections", "lightbox_ws_rejections_total",
                 "lightbox_messages_accepted_total", "lightbox_messages_delivered_total",
                 "lightbox_delivery_latency_seconds", "lightbox_queue_depth",
                 "lightbox_queue_depth_connected", "lightbox_send_batches_total",
                 "lightbox_known_batch_checks_total"):
        assert f"# HELP {name} " in text


def test_each_path_of_the_send_batches_is_exposed_at_zero_before_the_first_batch() -> None:
    got = samples(Metrics())
    assert {labels: value for (name, labels), value in got.items()
            if name == "lightbox_send_batches_total"} == {
        (("path", "known"),): 0, (("path", "read"),): 0, (("path", "rechecked"),): 0}
    assert {labels: value for (name, labels), value in got.items()
            if name == "lightbox_known_batch_checks_total"} == {
        (("check", "epoch"),): 0, (("check", "digest"),): 0}


def test_delivery_latency_buckets_reach_from_a_millisecond_to_an_hour() -> None:
    m = Metrics()
    m.delivery_latency.observe(0.0005)
    m.delivery_latency.observe(1800)
    got = samples(m)
    assert got[("lightbox_delivery_latency_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("lightbox_delivery_latency_seconds_bucket", (("le", "300.0"),))] == 1
    assert got[("lightbox_delivery_latency_seconds_bucket", (("le", "3600.0"),))] == 2


BOUNDS = (0.001, 0.0025, 0.01, 1, 300)


def exposed(*collectors: Collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples}


@pytest.mark.parametrize("labelnames", [(), ("generation",)])
def test_a_process_histogram_exposes_what_prometheus_clients_histogram_would(
        labelnames: tuple[str, ...]) -> None:
    """Same names, bounds (a value equal to a bound counted in its bucket), counts and sum,
    for a histogram with labels and one without."""
    ours = ProcessHistogram("lightbox_x_seconds", "Help.", BOUNDS, labelnames)
    theirs = Histogram("lightbox_x_seconds", "Help.", labelnames, buckets=BOUNDS,
                       registry=None)
    values = (0.0005, 0.001, 0.0011, 0.01, 2.0, 300.0, 4000.0)
    for v in values:
        if labelnames:
            ours.labels("1").observe(v)
            theirs.labels("1").observe(v)
        else:
            ours.observe(v)
            theirs.observe(v)
    got = exposed(ours)
    assert got == {k: v for k, v in exposed(theirs).items() if not k[0].endswith("_created")}
    assert got[("lightbox_x_seconds_bucket", (*(("generation", "1"),) * bool(labelnames),
                                              ("le", "0.001")))] == 2


def test_a_process_histogram_refuses_labels_it_was_not_made_with() -> None:
    plain = ProcessHistogram("lightbox_x_seconds", "Help.", BOUNDS)
    labelled = ProcessHistogram("lightbox_y_seconds", "Help.", BOUNDS, ["generation"])
    with pytest.raises(ValueError, match="takes labels"):
        plain.labels("0")
    with pytest.raises(ValueError, match="takes labels"):
        labelled.observe(0.1)
    with pytest.raises(ValueError, match="takes labels"):
        labelled.labels("0", "1")


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def test_what_the_processes_of_a_relay_publish_folds_into_the_one_histogram() -> None:
    """Several processes (server/metrics.py): each publishes its own totals as gauges, summed
    over the processes when the shared files are read; the scrape folds the sums back into
    the histogram, and the gauges themselves are not exposed."""
    one, two = (ProcessHistogram("lightbox_x_seconds", "Help.", BOUNDS) for _ in range(2))
    for h in (one, two):
        h.share(CollectorRegistry())
    one.observe(0.002)
    two.observe(0.002)
    two.observe(7.0)
    one.publish()
    one.observe(0.5)  # after the last publish: not in the files yet
    two.publish()
    families = [f for h in (one, two) for gauge in h._shared or () for f in gauge.collect()]
    assert {f.name for f in families} == {"lightbox_x_shared_count", "lightbox_x_shared_sum"}
    got = exposed(_Fixed(one.fold(families)))
    assert got[("lightbox_x_seconds_bucket", (("le", "0.0025"),))] == 2
    assert got[("lightbox_x_seconds_bucket", (("le", "300.0"),))] == 3
    assert got[("lightbox_x_seconds_count", ())] == 3
    assert got[("lightbox_x_seconds_sum", ())] == pytest.approx(7.004)
    assert not any("shared" in name for name, _ in got)


def test_a_process_histogram_alone_publishes_nothing_and_is_read_directly() -> None:
    h = ProcessHistogram("lightbox_x_seconds", "Help.", BOUNDS)
    h.observe(0.002)
    h.publish()  # not shared: nothing to write, and no error
    assert exposed(h)[("lightbox_x_seconds_count", ())] == 1


def test_the_exposition_is_prometheus_text() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_gauges_refreshed_from_the_process_state_are_current_at_each_scrape() -> None:
    """``lightbox_queue_depth_connected`` comes from the hub's connections (server/app.py):
    read when /metrics is scraped, not when the state changed."""
    m = Metrics()
    unacknowledged = [3]
    m.add_refresh(lambda: m.queue_depth_connected.set(unacknowledged[0]))
    assert samples(m)[("lightbox_queue_depth_connected", ())] == 3
    unacknowledged[0] = 0
    assert samples(m)[("lightbox_queue_depth_connected", ())] == 0

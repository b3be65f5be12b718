"""Prometheus metrics (text exposition format), one registry per app instance.

Labels are route templates and codes, never raw paths or ids, so cardinality stays bounded
and no identifier leaks into monitoring. Later components register their own instruments on
the same :class:`Metrics` object.

**A relay of several processes answers for all of them.** ``lightbox-server --workers N``
starts N processes on one port, and a scrape reaches whichever accepts it. Each process's own
counts would make every counter jump between N histories (which Prometheus reads as resets).
So the parent gives the workers one directory, ``PROMETHEUS_MULTIPROC_DIR`` (server/runner.py),
and prometheus_client's multiprocess mode keeps each process's values in files there; a scrape
reads them all (``MultiProcessCollector``): counters and histograms summed over the processes,
each gauge as its ``multiprocess_mode`` says (prometheus_client's "Multiprocess Mode"
documentation). What a process measures outside these instruments (the garbage collector's
pauses, server/gcwatch.py) is published into the files every second, and at each scrape by the
process that answers it. A relay run as one process, and every relay a test runs in a thread,
keeps its values in its own registry as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "SHARED_DIR", "Metrics", "PerProcess", "shared"]

# prometheus_client reads it when it is imported: set by the parent before a worker starts.
SHARED_DIR = "PROMETHEUS_MULTIPROC_DIR"


def shared() -> bool:
    """Whether this process's metrics live in the directory its relay's processes share."""
    return bool(os.environ.get(SHARED_DIR))


class PerProcess(Collector, Protocol):
    """Measurements a process takes outside the instruments (server/gcwatch.py): collected
    from the registry when the process is alone; else published into the shared files, and
    folded back into their exposition at scrape."""

    def share(self, registry: CollectorRegistry) -> None: ...

    def publish(self) -> None: ...

    def fold(self, families: list[Metric]) -> list[Metric]: ...


class _Families:
    """What generate_latest reads: collected families, passed through the folds."""

    def __init__(self, source: Collector, folds: Iterable[Callable[[list[Metric]], list[Metric]]]
                 ) -> None:
        self._source, self._folds = source, list(folds)

    def collect(self) -> Iterable[Metric]:
        families = list(self._source.collect())
        for fold in self._folds:
            families = fold(families)
        return families


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "lightbox_http_requests_total", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r)
        self.http_latency = Histogram(
            "lightbox_http_request_duration_seconds", "HTTP request latency by route.",
            ["route", "method"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.http_errors = Counter(
            "lightbox_http_errors_total", "HTTP error responses by code.", ["code"], registry=r)
        self.audit_events = Counter(
            "lightbox_audit_events_total", "Audit events appended, by event.", ["event"],
            registry=r)
        self.ws_connections = Gauge(
            "lightbox_ws_connections", "Connected (authenticated) devices.", registry=r,
            multiprocess_mode="livesum")
        self.ws_rejections = Counter(
            "lightbox_ws_rejections_total", "Websocket requests refused, by error code.",
            ["code"], registry=r)
        self.messages_accepted = Counter(
            "lightbox_messages_accepted_total", "Messages durably accepted.", registry=r)
        self.send_batches = Counter(
            "lightbox_send_batches_total",
            "Group-commit batches by how they were stored: 'known' in one statement against "
            "the threads' state read before, 'read' after reading it under the locks, "
            "'rechecked' when a thread's state had changed since or a message was a retry "
            "(then also counted as 'read').",
            ["path"], registry=r)
        for path in ("known", "read", "rechecked"):  # exposed at 0 before the first batch
            self.send_batches.labels(path)
        self.known_batch_checks = Counter(
            "lightbox_known_batch_checks_total",
            "Batches stored in one statement ('known' above), by how the threads' state was "
            "confirmed unchanged: 'epoch' when no change to members, devices or users had "
            "committed anywhere since it was read, 'digest' when one had and each thread's "
            "digest was compared.",
            ["check"], registry=r)
        for check in ("epoch", "digest"):
            self.known_batch_checks.labels(check)
        self.messages_delivered = Counter(
            "lightbox_messages_delivered_total",
            "Deliveries acknowledged by their device.", registry=r)
        self.deliveries_written = Counter(
            "lightbox_deliveries_written_total",
            "Deliveries written to devices' websockets, by how the pump had them: 'read' from "
            "the device's durable queue, 'handed_over' by this process's send pipeline right "
            "after COMMIT, without a read (the device connected to the process that stored "
            "the message, everything else it had queued already written to it).",
            ["path"], registry=r)
        for path in ("read", "handed_over"):
            self.deliveries_written.labels(path)
        self.delivery_reads = Counter(
            "lightbox_delivery_reads_total",
            "Statements reading devices' next deliveries (one for all the pumps that ask in "
            "an event-loop turn).", registry=r)
        self.delivery_latency = Histogram(
            "lightbox_delivery_latency_seconds",
            "From commit of a message to its delivery frame being written to the device.",
            registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 30,
                                 300, 3600))
        self.queue_depth = Gauge(  # every process counts the same table: the latest count
            "lightbox_queue_depth", "Deliveries waiting in the durable queues (all devices).",
            registry=r, multiprocess_mode="livemostrecent")
        self.queue_depth_connected = Gauge(
            "lightbox_queue_depth_connected",
            "Deliveries sent to connected devices and not yet acknowledged.", registry=r,
            multiprocess_mode="livesum")
        self.shared = shared()
        self._per_process: list[PerProcess] = []
        self._refresh: list[Callable[[], None]] = []

    def add_refresh(self, refresh: Callable[[], None]) -> None:
        """``refresh`` sets gauges from this process's state: run before each scrape, and every
        second when the relay has several processes (:meth:`publish`)."""
        self._refresh.append(refresh)

    def add_per_process(self, collector: PerProcess) -> None:
        """Expose ``collector``'s measurements: from this registry when the process is alone,
        else through the shared files (published by :meth:`publish`)."""
        if self.shared:
            collector.share(self.registry)
            self._per_process.append(collector)
        else:
            self.registry.register(collector)

    def publish(self) -> None:
        """Refresh this process's gauges and write its other measurements into the shared
        files (every second, server/app.py, and before each scrape)."""
        for refresh in self._refresh:
            refresh()
        for c in self._per_process:
            c.publish()

    async def publish_every(self, seconds: float = 1.0) -> None:
        while True:
            self.publish()
            await asyncio.sleep(seconds)

    def render(self) -> bytes:
        self.publish()
        if not self.shared:
            return generate_latest(self.registry)
        every = CollectorRegistry()
        collector = MultiProcessCollector(every)  # type: ignore[no-untyped-call]
        return generate_latest(_Families(collector, (c.fold for c in self._per_process)))

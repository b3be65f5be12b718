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
pauses, server/gcwatch.py; the delivery latency, a :class:`ProcessHistogram`) is published into
the files every second, and at each scrape by the process that answers it. A relay run as one
process, and every relay a test runs in a thread, keeps its values in its own registry as
before.

**A histogram observed on the hot path is kept in the process.** In multiprocess mode each
``Histogram.observe`` takes a lock and writes two values into the shared files: 1.6 µs here,
once per delivery written (docs/BENCHMARKS.md, round 20). A :class:`ProcessHistogram` counts
an observation in a list of this process's own (0.14 µs) and publishes its totals with the
other per-process measurements; a scrape shows the same histogram either way, at most a second
behind in a relay of several processes.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "SHARED_DIR", "Metrics", "PerProcess", "ProcessHistogram", "shared"]

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


class Series:
    """One label set's counts of a :class:`ProcessHistogram`: per bucket (the last: above every
    bound, not cumulative) and the observations' sum. :meth:`observe` only updates numbers in
    a list made in advance, so it may run inside the garbage collector (server/gcwatch.py)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound holds the value (``le``: value <= bound), as
        # prometheus_client's Histogram counts it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class ProcessHistogram(Collector):
    """A histogram kept in this process's memory (the module's docstring says why), exposed as
    prometheus_client's ``Histogram`` of the same name, help and buckets would be. A
    :class:`PerProcess` measurement: register it with :meth:`Metrics.add_per_process`.

    In a relay of several processes each publishes its totals as two gauges, summed over the
    processes by the multiprocess collector (the processes that have ended included, as their
    counters are), and :meth:`fold` turns the sums back into the histogram at scrape; the
    gauges themselves are never exposed."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.labelnames = tuple(labelnames)
        self._le: tuple[str, ...] = (
            *(floatToGoString(b) for b in self.bounds), "+Inf")  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], Series] = {}
        base = name.removesuffix("_seconds")
        self._counts_name, self._sums_name = f"{base}_shared_count", f"{base}_shared_sum"
        self._shared: tuple[Gauge, Gauge] | None = None
        self._unlabelled = self.labels() if not self.labelnames else None

    def labels(self, *values: str) -> Series:
        """The series of one label set, made (and exposed, at 0) on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = Series(self.bounds)
        return series

    def observe(self, value: float) -> None:
        """An observation of the histogram without labels."""
        if self._unlabelled is None:
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        self._unlabelled.observe(value)

    def collect(self) -> Iterator[Metric]:
        yield self._family({k: (s.counts, s.sum) for k, s in self._series.items()})

    def share(self, registry: CollectorRegistry) -> None:
        counts = Gauge(self._counts_name, f"Observations by bucket (folded into {self.name} "
                       "at scrape).", [*self.labelnames, "le"], registry=registry,
                       multiprocess_mode="sum")
        sums = Gauge(self._sums_name, f"Sum of observations (folded into {self.name} at "
                     "scrape).", list(self.labelnames), registry=registry,
                     multiprocess_mode="sum")
        self._shared = (counts, sums)

    def publish(self) -> None:
        """This process's totals into the shared files (nothing when it is alone)."""
        if self._shared is None:
            return
        counts, sums = self._shared
        for values, series in list(self._series.items()):
            for le, n in zip(self._le, series.counts, strict=True):
                counts.labels(*values, le).set(n)
            (sums.labels(*values) if values else sums).set(series.sum)

    def fold(self, families: list[Metric]) -> list[Metric]:
        """The families read from the shared files, this histogram's gauges replaced by the
        histogram they sum to."""
        totals: dict[tuple[str, ...], tuple[list[float], float]] = {
            k: ([0.0] * len(self._le), 0.0) for k in self._series}
        kept = []
        for family in families:
            if family.name not in (self._counts_name, self._sums_name):
                kept.append(family)
                continue
            for sample in family.samples:
                key = tuple(sample.labels.get(n, "") for n in self.labelnames)
                counts, total = totals.setdefault(key, ([0.0] * len(self._le), 0.0))
                if family.name == self._sums_name:
                    totals[key] = (counts, total + sample.value)
                elif (le := sample.labels.get("le")) in self._le:
                    counts[self._le.index(le)] += sample.value
        kept.append(self._family(totals))
        return kept

    def _family(self, series: Mapping[tuple[str, ...], tuple[Sequence[float], float]]
                ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=list(self.labelnames))
        for values, (counts, total) in sorted(series.items()):
            running = 0.0
            buckets = []
            for le, n in zip(self._le, counts, strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric(list(values), buckets, total)
        return family


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
        self.ciphertext_purged = Counter(
            "lightbox_ciphertext_purged_total",
            "Messages whose ciphertext the relay's sweep deleted: one that never had a delivery, "
            "or that a relay before alembic migration 0021 kept. Removing a message's last "
            "queued delivery deletes it at once, uncounted here (server/purge.py).", registry=r)
        self.delivery_reads = Counter(
            "lightbox_delivery_reads_total",
            "Statements reading devices' next deliveries (one for all the pumps that ask in "
            "an event-loop turn).", registry=r)
        # Observed once per delivery written: kept in the process (ProcessHistogram).
        self.delivery_latency = ProcessHistogram(
            "lightbox_delivery_latency_seconds",
            "From commit of a message to its delivery frame being written to the device.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 30, 300, 3600))
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
        self.add_per_process(self.delivery_latency)

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

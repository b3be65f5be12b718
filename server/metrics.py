"""Prometheus metrics (text exposition format), one registry per app instance.

Labels are route templates and codes, never raw paths or ids, so cardinality stays bounded
and no identifier leaks into monitoring. Later components register their own instruments on
the same :class:`Metrics` object.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]


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
            "lightbox_ws_connections", "Connected (authenticated) devices.", registry=r)
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
        self.queue_depth = Gauge(
            "lightbox_queue_depth", "Deliveries waiting in the durable queues (all devices).",
            registry=r)
        self.queue_depth_connected = Gauge(
            "lightbox_queue_depth_connected",
            "Deliveries sent to connected devices and not yet acknowledged.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

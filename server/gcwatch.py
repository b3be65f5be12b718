"""The relay process's garbage collector: start-up objects frozen, the young generation
collected less often, every collection's pause measured (docs/ARCHITECTURE.md §3, "Garbage
collection").

CPython frees most objects by reference counting; its cyclic collector also walks, now and then,
every object that can hold references, and stops the whole process while it does. A relay
process holds 120,000-140,000 such objects once started (modules, classes, the application, the
SCIM schema), almost none of which will ever be garbage, and a full collection walked them all:
80-186 ms here, with every websocket of the process waiting, every few seconds under load
(docs/BENCHMARKS.md, round 9). :func:`freeze_start_up` collects once, then moves everything
alive to the collector's permanent generation (``gc.freeze``, Python's ``gc`` documentation),
which later collections skip. What the process allocates afterwards is collected as before;
an object made at start-up and later dropped inside a reference cycle is never freed (bounded:
once per such object).

It then raises the young generation's threshold (:data:`YOUNG_THRESHOLD`): CPython collects
the young generation whenever the objects that can hold references, allocated less freed,
grow by 700 since the last collection. A relay process storing group-commit batches of 256
messages keeps several thousand such objects alive per batch (each send's frame, its pending
entry, its store row, its answer), so at 700 it collected 24 times per 1,000 messages and
spent 12.8 µs per message in the collector, walking the same batch's objects again and again
before they were freed by reference counting; at 10,000 it collects 0.07 times per 1,000
messages, 0.16 µs per message (docs/BENCHMARKS.md, round 19). Cyclic garbage then waits
longer to be freed: at most that many objects more.

This is for a relay *process* (server/runner.py ``serve``), never a relay run inside another
program: tests start relays in threads of the test process, and freezing there would keep that
process's cyclic garbage for good.

:class:`PauseWatch` times each collection from ``gc.callbacks`` and exposes the pauses as the
histogram ``lightbox_gc_pause_seconds{generation}`` and the frozen count as
``lightbox_gc_frozen_objects``. The callback runs inside the collector, so it takes no lock and
allocates nothing that the collector tracks: it only updates numbers in preallocated lists,
read when ``/metrics`` is scraped (a custom collector, prometheus_client's documented way): a
:class:`~server.metrics.ProcessHistogram` with one series per generation, made in advance.
In a relay of several processes (server/metrics.py) each process publishes its counts into the
shared files every second, as gauges summed over the processes, and the scrape folds them back
into the one histogram; the frozen count is then the fewest any live process froze, so that a
process that did not freeze still shows as 0.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.metrics import ProcessHistogram

__all__ = ["BUCKETS", "YOUNG_THRESHOLD", "PauseWatch", "freeze_start_up", "frozen_count"]

# Seconds: a young collection takes well under a millisecond; an unfrozen full one took up
# to 186 ms here.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GENERATIONS = 3
_PAUSES = "lightbox_gc_pause_seconds"
_PAUSES_HELP = ("How long each garbage collection stopped this relay process, by generation "
                "(2 is a full collection; objects alive at start-up are frozen and not walked).")
_FROZEN = "lightbox_gc_frozen_objects"
_FROZEN_HELP = "Objects frozen at start-up, which garbage collections no longer walk."
_YOUNG = "lightbox_gc_young_threshold"
_YOUNG_HELP = ("Objects allocated (less those freed) between two young-generation collections "
               "of this relay process (Python's default: 700).")
# The young generation's threshold in a relay process (the module's docstring says why).
YOUNG_THRESHOLD = 10_000


# How many objects freeze_start_up froze, counted once. ``gc.get_freeze_count`` walks the whole
# permanent generation to count it (a linked list; 4 ms for the relay's 120,000 objects with
# the cache warm, more when cold), with the process stopped meanwhile; reading it every second
# and at every scrape stalled every websocket of the process for that long (BENCHMARKS.md,
# round 16). Nothing else in the relay freezes, so the count cannot change after start-up.
_frozen = 0


def freeze_start_up() -> int:
    """Collect what start-up left behind, then freeze everything still alive, and raise the
    young generation's threshold to :data:`YOUNG_THRESHOLD` (the older generations' are
    kept); returns how many objects are frozen."""
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = gc.get_freeze_count()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return _frozen


def frozen_count() -> int:
    """How many objects :func:`freeze_start_up` froze (0 before, or when it never ran)."""
    return _frozen


class PauseWatch(Collector):
    """Times every collection of this process (once :meth:`install`-ed) and exposes the pauses
    by generation, beside how many objects are frozen."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        # Made in advance, one series per generation: the callback only updates their numbers.
        self.pauses = ProcessHistogram(_PAUSES, _PAUSES_HELP, BUCKETS, ["generation"])
        self._generations = [self.pauses.labels(str(g)) for g in range(GENERATIONS)]
        self._installed = False
        self._shared: tuple[Gauge, Gauge] | None = None

    def install(self) -> PauseWatch:
        if not self._installed:
            gc.callbacks.append(self.on_gc)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self.on_gc)
            self._installed = False

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """``gc.callbacks`` entry: called with ``"start"`` and ``"stop"`` around each
        collection (Python's ``gc`` documentation)."""
        if phase == "start":
            self._started = self._clock()
            return
        generation = info.get("generation", 0)
        if not 0 <= generation < GENERATIONS:
            return
        self._generations[generation].observe(self._clock() - self._started)

    def collect(self) -> Iterator[Any]:
        yield from self.pauses.collect()
        yield GaugeMetricFamily(_FROZEN, _FROZEN_HELP, value=frozen_count())
        yield GaugeMetricFamily(_YOUNG, _YOUNG_HELP, value=gc.get_threshold()[0])

    # -- several processes (server/metrics.py PerProcess) ---------------------------------

    def share(self, registry: CollectorRegistry) -> None:
        self.pauses.share(registry)
        frozen = Gauge(_FROZEN, _FROZEN_HELP, registry=registry, multiprocess_mode="livemin")
        young = Gauge(_YOUNG, _YOUNG_HELP, registry=registry, multiprocess_mode="livemin")
        self._shared = (frozen, young)

    def publish(self) -> None:
        """This process's counts into the shared files (the pauses summed over the processes
        at scrape, those that have ended included; the frozen count and the threshold the
        fewest of the live processes')."""
        if self._shared is None:
            return
        self.pauses.publish()
        frozen, young = self._shared
        frozen.set(_frozen)
        young.set(gc.get_threshold()[0])

    def fold(self, families: list[Metric]) -> list[Metric]:
        """Every process's published pauses, read from the shared files, as the histogram a
        process alone exposes."""
        return self.pauses.fold(families)

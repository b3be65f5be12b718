"""server/gcwatch.py: start-up objects frozen out of later garbage collections, and every
collection's pause exposed by generation. A real relay process freezes and reports
(tests/server/test_processes.py); here the parts, the freeze in a process of its own (freezing
the test process would keep its cyclic garbage for good)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.gcwatch import BUCKETS, YOUNG_THRESHOLD, PauseWatch
from tests.helpers import ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def watched() -> tuple[PauseWatch, Clock, CollectorRegistry]:
    clock = Clock()
    watch = PauseWatch(clock)
    registry = CollectorRegistry()
    registry.register(watch)
    return watch, clock, registry


def collection(watch: PauseWatch, clock: Clock, generation: int, seconds: float) -> None:
    watch.on_gc("start", {"generation": generation})
    clock.now += seconds
    watch.on_gc("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def test_a_pause_is_counted_in_its_generation_in_the_first_bucket_that_holds_it() -> None:
    watch, clock, registry = watched()
    collection(watch, clock, 2, 0.08)
    collection(watch, clock, 0, 0.0002)
    collection(watch, clock, 0, 0.0002)
    name = "lightbox_gc_pause_seconds"
    assert sample(registry, f"{name}_bucket", generation="2", le="0.05") == 0
    assert sample(registry, f"{name}_bucket", generation="2", le="0.1") == 1
    assert sample(registry, f"{name}_bucket", generation="2", le="+Inf") == 1
    assert sample(registry, f"{name}_sum", generation="2") == pytest.approx(0.08)
    assert sample(registry, f"{name}_bucket", generation="0", le="0.0001") == 0
    assert sample(registry, f"{name}_bucket", generation="0", le="0.00025") == 2
    assert sample(registry, f"{name}_count", generation="0") == 2
    assert sample(registry, f"{name}_count", generation="1") == 0  # exposed before the first


def test_a_pause_longer_than_every_bound_is_counted_only_in_inf() -> None:
    watch, clock, registry = watched()
    collection(watch, clock, 1, BUCKETS[-1] * 3)
    name = "lightbox_gc_pause_seconds_bucket"
    assert sample(registry, name, generation="1", le=repr(BUCKETS[-1])) == 0
    assert sample(registry, name, generation="1", le="+Inf") == 1


def test_a_generation_the_watch_does_not_know_is_ignored_not_raised_inside_the_collector(
        ) -> None:
    watch, clock, registry = watched()
    collection(watch, clock, 7, 0.01)
    collection(watch, clock, -1, 0.01)
    assert all(sample(registry, "lightbox_gc_pause_seconds_count", generation=str(g)) == 0
               for g in range(3))


def test_the_counts_two_processes_publish_fold_into_the_one_histogram() -> None:
    """A relay of several processes (server/metrics.py): each publishes its counts as gauges,
    summed over the processes when the shared files are read; the scrape folds them into the
    histogram a process alone exposes, and the gauges themselves are not exposed."""
    shared = CollectorRegistry()  # stands for the sum over the processes' files
    one, two = PauseWatch(Clock()), PauseWatch(Clock())
    one.share(CollectorRegistry())
    two.share(CollectorRegistry())
    collection(one, one._clock, 0, 0.0004)
    collection(one, one._clock, 2, 0.03)
    collection(two, two._clock, 0, 0.0004)
    collection(two, two._clock, 0, 2.0)
    one.publish()
    two.publish()
    families: list[Metric] = []
    for w in (one, two):
        assert w.pauses._shared is not None
        for gauge in w.pauses._shared:
            families.extend(gauge.collect())
    for family in one.fold(families):
        shared.register(_Fixed(family))
    assert sample(shared, "lightbox_gc_pause_seconds_bucket", generation="0", le="0.0005") == 2
    assert sample(shared, "lightbox_gc_pause_seconds_bucket", generation="0", le="+Inf") == 3
    assert sample(shared, "lightbox_gc_pause_seconds_count", generation="0") == 3
    assert sample(shared, "lightbox_gc_pause_seconds_sum", generation="0") == pytest.approx(2.0008)
    assert sample(shared, "lightbox_gc_pause_seconds_bucket", generation="2", le="0.025") == 0
    assert sample(shared, "lightbox_gc_pause_seconds_bucket", generation="2", le="0.05") == 1
    assert sample(shared, "lightbox_gc_pause_seconds_count", generation="1") == 0
    assert sample(shared, "lightbox_gc_pause_shared_count", generation="0", le="+Inf") is None


def test_a_watch_not_shared_publishes_nothing() -> None:
    watch, clock, registry = watched()
    collection(watch, clock, 0, 0.001)
    watch.publish()  # a process alone: its registry collects the watch directly
    assert sample(registry, "lightbox_gc_pause_seconds_count", generation="0") == 1


class _Fixed(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> list[Metric]:
        return [self.family]


def test_an_installed_watch_times_the_collections_python_runs() -> None:
    watch = PauseWatch()
    registry = CollectorRegistry()
    registry.register(watch)
    watch.install()
    watch.install()  # once only: a second install does not count each collection twice
    try:
        before = sample(registry, "lightbox_gc_pause_seconds_count", generation="1")
        gc.collect(1)
        after = sample(registry, "lightbox_gc_pause_seconds_count", generation="1")
    finally:
        watch.uninstall()
    assert before is not None and after == before + 1
    assert watch.on_gc not in gc.callbacks
    gc.collect(1)
    assert sample(registry, "lightbox_gc_pause_seconds_count", generation="1") == after


FREEZE = """
import gc, json, weakref
from prometheus_client import CollectorRegistry
from server.gcwatch import PauseWatch, freeze_start_up

class Node:
    pass

a, b = Node(), Node()
a.peer, b.peer = b, a
garbage = weakref.ref(a)
del a, b
alive = [Node()]
registry = CollectorRegistry()
registry.register(PauseWatch())
before = registry.get_sample_value("lightbox_gc_frozen_objects")
thresholds = gc.get_threshold()
frozen = freeze_start_up()
print(json.dumps({
    "before": before, "frozen": frozen,
    "exposed": registry.get_sample_value("lightbox_gc_frozen_objects"),
    "thresholds": [thresholds, gc.get_threshold()],
    "young_exposed": registry.get_sample_value("lightbox_gc_young_threshold"),
    "garbage_collected": garbage() is None,
    "still_walked": sum(1 for o in gc.get_objects() if o is alive),
}))
"""


def test_freezing_collects_start_up_garbage_first_then_takes_the_living_out_of_later_walks(
        ) -> None:
    """...and raises the young generation's threshold to YOUNG_THRESHOLD, the older ones'
    kept, and /metrics says so."""
    out = subprocess.run([sys.executable, "-c", FREEZE], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["before"] == 0
    assert result["frozen"] > 1000 and result["exposed"] == result["frozen"]
    assert result["garbage_collected"]  # a cycle dropped before the freeze is not kept
    assert result["still_walked"] == 0  # what was alive is no longer in any generation
    (young, *older), after = result["thresholds"]
    assert young == 700 and after == [YOUNG_THRESHOLD, *older]
    assert result["young_exposed"] == YOUNG_THRESHOLD


def test_a_scrape_or_a_publish_never_walks_the_frozen_objects_to_count_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``gc.get_freeze_count`` walks every frozen object (120,000 in a relay process, about
    4 ms with the process stopped); the count is taken once, when start-up is frozen, and a
    scrape (a process alone) or a publish (every second, several processes) reads that."""
    walks: list[int] = []

    def get_freeze_count() -> int:
        walks.append(1)
        return 123

    monkeypatch.setattr(gc, "get_freeze_count", get_freeze_count)
    watch, _, registry = watched()
    watch.share(CollectorRegistry())
    for _ in range(3):
        watch.publish()
        sample(registry, "lightbox_gc_frozen_objects")
    assert walks == []

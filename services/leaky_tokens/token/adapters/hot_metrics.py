"""Lock-free counters and latency histograms for the decision hot path, scraped as usual."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric


class Tally:
    """One counter series: a plain int (prometheus_client's inc() takes a lock: ~0.5 us)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Add `amount` (never negative)."""
        self.value += amount


class Timings:
    """One histogram series: per-bucket counts found by bisection (observe() costs ~0.2 us,
    prometheus_client's ~1 us: two locked increments and a linear scan)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.sum += seconds
        self.counts[bisect_left(self.bounds, seconds)] += 1


class HotMetrics:
    """A counter family and a histogram family whose series are written without locks.

    Written only from the event loop's thread; the scrape (the /metrics server's thread)
    reads plain ints, so a scrape may see one observation in a bucket but not yet in the
    sum, never a torn value. New series are added under a lock the scrape also takes.
    """

    def __init__(
        self,
        counter: tuple[str, str, Sequence[str]],
        histogram: tuple[str, str, str, Sequence[float]],
    ) -> None:
        self._counter_name, self._counter_doc, self._counter_labels = counter
        self._hist_name, self._hist_doc, self._hist_label, bounds = histogram
        self._bounds = tuple(bounds)
        self._tallies: dict[tuple[str, ...], Tally] = {}
        self._timings: dict[str, Timings] = {}
        self._lock = threading.Lock()

    def tally(self, labels: tuple[str, ...]) -> Tally:
        """The series of `labels` (created on first use; callers keep it or cache it)."""
        found = self._tallies.get(labels)
        if found is None:
            with self._lock:
                found = self._tallies.setdefault(labels, Tally())
        return found

    def timings(self, label: str) -> Timings:
        """The histogram series of `label`."""
        with self._lock:
            return self._timings.setdefault(label, Timings(self._bounds))

    def describe(self) -> list[Metric]:
        """The two family names, so the registry refuses a duplicate."""
        return [
            CounterMetricFamily(self._counter_name, self._counter_doc),
            HistogramMetricFamily(self._hist_name, self._hist_doc),
        ]

    def collect(self) -> Iterator[Metric]:
        """Every series as it is now."""
        with self._lock:
            tallies = list(self._tallies.items())
            timings = list(self._timings.items())
        counter = CounterMetricFamily(
            self._counter_name, self._counter_doc, labels=list(self._counter_labels)
        )
        for labels, tally in tallies:
            counter.add_metric(list(labels), tally.value)
        yield counter
        hist = HistogramMetricFamily(self._hist_name, self._hist_doc, labels=[self._hist_label])
        edges = [*(repr(float(b)) for b in self._bounds), "+Inf"]
        for label, series in timings:
            running, buckets = 0, []
            for edge, count in zip(edges, list(series.counts), strict=True):
                running += count
                buckets.append((edge, float(running)))
            hist.add_metric([label], buckets, series.sum)
        yield hist

"""A tiny Prometheus registry: counters, gauges read at scrape time, and histograms; text exposition 0.0.4.

prometheus_client is not a dependency, and the service needs only a handful of metrics, so they are kept
here with the smallest possible cost per update (a dict lookup and an add on the event loop thread; every
update happens on that one thread, so no locks).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

Labels = tuple[str, ...]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency: a cached lookup takes well under a millisecond, a new image tens of milliseconds, a slow
# upstream up to the fetch timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[Labels, float] = {} if labels else {(): 0.0}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_label_text(self.label_names, labels)} {_number(value)}"


class Gauge:
    """A value read from the application when scraped (cache sizes, queue length)."""

    def __init__(
        self,
        name: str,
        help: str,
        read: Callable[[], Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
    ) -> None:
        self.name, self.help, self.read, self.label_names = name, help, read, tuple(labels)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in self.read():
            yield f"{self.name}{_label_text(self.label_names, labels)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.bounds = tuple(sorted(buckets))
        # Per label set: [count per bucket (non-cumulative, last is +Inf)], sum, count.
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def count(self, *labels: str) -> int:
        series = self.series.get(labels)
        return sum(series[0]) if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += count
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_label_text(self.label_names, labels, le)} {cumulative}"
            yield f"{self.name}_sum{_label_text(self.label_names, labels)} {_number(total[0])}"
            yield f"{self.name}_count{_label_text(self.label_names, labels)} {cumulative}"


Metric = Counter | Gauge | Histogram


class Metrics:
    """The service's metrics, one attribute each; `render()` gives the /metrics page."""

    def __init__(self) -> None:
        self.requests = Counter(
            "invertornot_http_requests_total", "HTTP requests by route and status.", ("method", "route", "status")
        )
        self.latency = Histogram(
            "invertornot_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            LATENCY_BUCKETS,
            ("route",),
        )
        self.cache_hits = Counter("invertornot_cache_hits_total", "Cache lookups that hit, by cache.", ("cache",))
        self.cache_misses = Counter(
            "invertornot_cache_misses_total", "Cache lookups that missed, by cache.", ("cache",)
        )
        self.classifications = Counter(
            "invertornot_classifications_total",
            "Images run through the classifier, by outcome (verdict or the image error code).",
            ("outcome",),
        )
        self.batch_size = Histogram(
            "invertornot_classify_batch_size", "Images per classifier call (micro-batching).", BATCH_BUCKETS
        )
        self.batch_seconds = Histogram(
            "invertornot_classify_batch_duration_seconds", "Time of one classifier call.", LATENCY_BUCKETS
        )
        self.fetches = Counter("invertornot_upstream_fetches_total", "Upstream image fetches started.")
        self.fetch_errors = Counter(
            "invertornot_upstream_fetch_errors_total", "Upstream image fetches that failed, by error code.", ("code",)
        )
        self.rate_limited = Counter("invertornot_rate_limited_total", "Requests refused with 429.")
        self._extra: list[Metric] = []

    def add(self, metric: Metric) -> None:
        """Register an application-provided metric (gauges over caches, for example)."""
        self._extra.append(metric)

    def all(self) -> list[Metric]:
        own = [value for value in vars(self).values() if isinstance(value, Counter | Gauge | Histogram)]
        return own + self._extra

    def render(self) -> str:
        return "\n".join(line for metric in self.all() for line in metric.render()) + "\n"

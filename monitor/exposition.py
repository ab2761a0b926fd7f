"""The /metrics body: Prometheus' text exposition format, as generate_latest writes it, with each series' prefix cached.

prometheus_client's `generate_latest` escapes and formats every label of every sample on every scrape. For the
daemon's ~3,800 series (the registry of tests/test_metrics_exposition.py with 30 platforms) it took 28 ms, of which
collecting the samples was 10 ms and formatting them 18 ms; this writer takes 16 ms. The series set is fixed by
platforms, not by connections, so the text before each value (`name{label="value",...} `) is built once per series
and then only looked up. Values, HELP and TYPE lines are spelled as the library spells them (its `floatToGoString`,
its type names). A family whose shape this writer does not render (info, stateset, an OpenMetrics-only sample such
as `_created`, a timestamp) hands the whole scrape back to `generate_latest`, so the output is never a guess.

Counters, gauges and histograms of prometheus_client's own classes are read from their label children directly,
not through `collect()`: collecting built a Sample and a label dict per series, ~10 ms of the 16 at 30 platforms
(and the young garbage collections they set off during a scrape), and a family's collect could not be sliced (the
1,710-series health-transition counter ran ~5 ms in one piece). This reads the library's private attributes; a
metric that lacks one, or whose samples are computed (a gauge's `set_function`), goes through `collect()`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Metric types whose samples are all plain series of the family, named alike in both text formats.
_PLAIN = frozenset({"counter", "gauge", "histogram", "summary"})
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
_MAX_CACHED = 100_000  # series prefixes kept; far above the daemon's fixed set, a bound should that ever change
_CHECK_EVERY = 256  # samples written between looks at the clock

_format_value: Callable[[float], str] = floatToGoString  # the library's spelling: 1.0, 1e+06, +Inf, NaN
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
_DIRECT: dict[type, str] = {
    Counter: "counter",
    Gauge: "gauge",
    Histogram: "histogram",
}  # exact classes: a subclass may sample itself


class _Unsupported(Exception):
    """A family outside what this writer renders: the scrape falls back to generate_latest."""


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Exposition:
    """Renders one registry; keep one instance per registry so its prefix caches live across scrapes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._prefixes: dict[SeriesKey, str] = {}  # collected families: (sample name, labels) -> prefix
        self._series: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}  # read families: see _series_of
        self._headers: dict[tuple[str, str, str], str] = {}

    async def render(self, slice_seconds: float = 0.002) -> bytes:
        """The body, written in slices of about `slice_seconds` of CPU with the event loop's turn between them, so
        that webhooks arriving during a scrape wait for one slice, not for the whole render (bench/scrape.py).
        Families are not a snapshot across each other either way (generate_latest's neither)."""
        out: list[str] = []
        clock = time.perf_counter
        try:
            deadline = clock() + slice_seconds
            for _ in self._write(out):
                if clock() >= deadline:
                    await asyncio.sleep(0)
                    deadline = clock() + slice_seconds
        except _Unsupported:
            return generate_latest(self._registry)
        return "".join(out).encode()

    def _write(self, out: list[str]) -> Iterator[None]:
        """Append the body to `out`, pausing (yielding) after each family and every few hundred series."""
        for collector in self._collectors():
            children = _children(collector)
            if children is None:
                for metric in collector.collect():
                    yield from self._write_family(metric, out)
            else:
                yield from self._write_children(collector, children, out)

    def _collectors(self) -> list[Collector]:
        """The registry's collectors in registration order, the order of `collect()` and generate_latest."""
        registry: Any = self._registry
        try:
            with registry._lock:
                return list(registry._collector_to_names)
        except AttributeError:
            raise _Unsupported("registry") from None

    def _write_children(
        self, metric: Any, children: Sequence[tuple[tuple[str, ...], Any]], out: list[str]
    ) -> Iterator[None]:
        """A counter, gauge or histogram read from its `(label values, child)` pairs."""
        append = out.append
        kind = _DIRECT[type(metric)]
        name: str = metric._name
        append(self._header(f"{name}_total" if kind == "counter" else name, kind, metric._documentation))
        histogram = kind == "histogram"
        for count, (values, child) in enumerate(children, 1):
            series = self._series.get((name, values)) or self._series_of(metric, kind, values)
            if histogram:
                acc = 0.0
                for prefix, bucket in zip(series, child._buckets, strict=False):  # then _count and maybe _sum
                    acc += bucket.get()
                    append(prefix)
                    append(_format_value(acc))
                    append("\n")
                append(series[len(child._buckets)])
                append(_format_value(acc))
                append("\n")
                if child._upper_bounds[0] >= 0:
                    append(series[-1])
                    append(_format_value(child._sum.get()))
                    append("\n")
            else:
                append(series[0])
                append(_format_value(child._value.get()))
                append("\n")
            if count % _CHECK_EVERY == 0:
                yield
        yield

    def _series_of(self, metric: Any, kind: str, values: tuple[str, ...]) -> tuple[str, ...]:
        """The prefixes of one child's lines, in order: the value's, or a histogram's buckets, `_count`, `_sum`."""
        name: str = metric._name
        labels = tuple(zip(metric._labelnames, values, strict=True))
        if kind == "histogram":
            keys = [(f"{name}_bucket", (*labels, ("le", _format_value(bound)))) for bound in metric._upper_bounds]
            keys += [(f"{name}_count", labels), (f"{name}_sum", labels)]
        else:
            keys = [(f"{name}_total" if kind == "counter" else name, labels)]
        series = tuple(_series_prefix(sample_name, series_labels) for sample_name, series_labels in keys)
        if len(self._series) >= _MAX_CACHED:
            self._series.clear()
        self._series[(name, values)] = series
        return series

    def _write_family(self, metric: Metric, out: list[str]) -> Iterator[None]:
        """A family from its collector's `collect()`."""
        append = out.append
        prefixes = self._prefixes
        kind = metric.type
        if kind not in _PLAIN:
            raise _Unsupported(kind)
        name = f"{metric.name}_total" if kind == "counter" else metric.name
        append(self._header(name, kind, metric.documentation))
        for index, sample in enumerate(metric.samples, 1):
            if sample.timestamp is not None:
                raise _Unsupported("timestamp")
            key = (sample.name, tuple(sample.labels.items()))
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = self._prefix(metric.name, key)
            append(prefix)
            append(_format_value(sample.value))
            append("\n")
            if index % _CHECK_EVERY == 0:
                yield
        yield

    def _header(self, name: str, kind: str, documentation: str) -> str:
        key = (name, kind, documentation)
        header = self._headers.get(key)
        if header is None:
            help_text = documentation.replace("\\", r"\\").replace("\n", r"\n")
            header = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
            self._headers[key] = header
        return header

    def _prefix(self, family: str, key: SeriesKey) -> str:
        sample_name, labels = key
        if any(sample_name == family + suffix for suffix in _OPENMETRICS_ONLY):
            raise _Unsupported(sample_name)
        prefix = _series_prefix(sample_name, labels)
        if len(self._prefixes) >= _MAX_CACHED:
            self._prefixes.clear()
        self._prefixes[key] = prefix
        return prefix


def _series_prefix(sample_name: str, labels: Sequence[tuple[str, str]]) -> str:
    """`name{label="value",...} `, labels sorted and escaped as generate_latest writes them."""
    if not labels:
        return f"{sample_name} "
    inner = ",".join(f'{label}="{_escape_value(value)}"' for label, value in sorted(labels))
    return f"{sample_name}{{{inner}}} "


def _children(metric: object) -> list[tuple[tuple[str, ...], Any]] | None:
    """The `(label values, child)` pairs of a counter, gauge or histogram of the library's own classes, in the
    order `collect()` lists them; None for a metric to collect the usual way."""
    if type(metric) not in _DIRECT:
        return None
    m: Any = metric
    try:
        if m._labelnames and not m._labelvalues:  # a parent: its children hold the values
            with m._lock:
                children = list(m._metrics.items())
        else:
            children = [((), m)]
        for _, child in children:
            value = child._sum if type(m) is Histogram else child._value
            if "_child_samples" in vars(child) or getattr(value, "_multiprocess", False):
                return None  # a set_function gauge, or multiprocess values: the library reads those
    except (AttributeError, TypeError):
        return None  # a version of the library laid out otherwise
    return children

"""The /metrics body: Prometheus' text exposition format, as generate_latest writes it, with each series' prefix cached.

prometheus_client's `generate_latest` escapes and formats every label of every sample on every scrape. For the
daemon's ~3,800 series (the registry of tests/test_metrics_exposition.py with 30 platforms) it took 28 ms, of which
collecting the samples was 10 ms and formatting them 18 ms; this writer takes 16 ms. The series set is fixed by
platforms, not by connections, so the text before each value (`name{label="value",...} `) is built once per series
and then only looked up. Values, HELP and TYPE lines are spelled as the library spells them (its `floatToGoString`,
its type names). A family whose shape this writer does not render (info, stateset, an OpenMetrics-only sample such
as `_created`, a timestamp) hands the whole scrape back to `generate_latest`, so the output is never a guess."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

# Metric types whose samples are all plain series of the family, named alike in both text formats.
_PLAIN = frozenset({"counter", "gauge", "histogram", "summary"})
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")
_MAX_CACHED = 100_000  # series prefixes kept; far above the daemon's fixed set, a bound should that ever change
_CHECK_EVERY = 256  # samples written between looks at the clock

_format_value: Callable[[float], str] = floatToGoString  # the library's spelling: 1.0, 1e+06, +Inf, NaN
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class _Unsupported(Exception):
    """A family outside what this writer renders: the scrape falls back to generate_latest."""


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Exposition:
    """Renders one registry; keep one instance per registry so its prefix cache lives across scrapes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._prefixes: dict[SeriesKey, str] = {}
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
        """Append the body to `out`, pausing (yielding) after each family and every few hundred samples."""
        append = out.append
        prefixes = self._prefixes
        for metric in self._registry.collect():
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
        if labels:
            inner = ",".join(f'{label}="{_escape_value(value)}"' for label, value in sorted(labels))
            prefix = f"{sample_name}{{{inner}}} "
        else:
            prefix = f"{sample_name} "
        if len(self._prefixes) >= _MAX_CACHED:
            self._prefixes.clear()
        self._prefixes[key] = prefix
        return prefix

"""The daemon's metric contract, as the ops kit (rules and dashboards) relies on it, read from the daemon itself.

`METRIC_FAMILIES` is built at import from the exposition of a real `monitor.metrics.Metrics` registry: a fresh
`CollectorRegistry`, the scrape-time fleet collector over a small fleet (two platforms, every stage and health),
one request per Rutter API endpoint and one notification route, so that every labelled family has its children.
Each family's type and label names come from what Prometheus would scrape, never from a hand-written list.

`PENDING_FAMILIES` declares the families of the alerting work (issue 3) that the kit was written against before
the daemon exported them. A declaration stands in only while its family is absent from the registry (or exported
without any series, so its labels cannot be read); tests/test_metric_contract.py checks each one against the
registry once the family is there, and the end-to-end test allows exactly the queries of pending families to be
empty, so both tighten by themselves.

`LABEL_VALUES` holds the closed label value sets the kit filters on, read from the same registry (the daemon
pre-creates the children of its bounded label sets), so a typo in a matcher value is caught too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.alerting.rules import ALERTMANAGER_NAMES, AlertName, Severity
from monitor.config import Settings
from monitor.domain import ConnectionState, Health, LifecycleStage
from monitor.fleet import Fleet
from monitor.metrics import Metrics
from monitor.rutter.client import Endpoint


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One exported family: its Prometheus type and label names (without `le`, `job` and `instance`)."""

    type: str
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ExportedFamily:
    """One family as the registry's exposition shows it."""

    type: str
    help: str
    labels: frozenset[str]
    series: int  # samples, `_created` ones excluded
    values: dict[str, frozenset[str]]  # label -> the values its samples carry


def _family(kind: str, *labels: str) -> MetricFamily:
    return MetricFamily(kind, frozenset(labels))


# Labels whose values form a closed set; their values in the kit's matchers must be ones the registry exports.
CLOSED_LABELS: Final[frozenset[str]] = frozenset(
    {
        "lifecycle_stage",
        "health",
        "from_stage",
        "to_stage",
        "from_health",
        "to_health",
        "outcome",
        "task",
        "endpoint",
        "code",
        "alert",
        "severity",
    }
)

PLATFORMS: Final[tuple[str, ...]] = ("SHOPIFY", "QUICKBOOKS")


def _sample_fleet(now: datetime) -> Fleet:
    """A fleet with a connection in every stage and every health, over two platforms."""
    states = []
    for n, (stage, health) in enumerate((s, h) for s in LifecycleStage for h in Health):
        since = now - timedelta(hours=n + 1)
        states.append(
            ConnectionState(
                id=f"conn_{n}",
                platform=PLATFORMS[n % len(PLATFORMS)],
                lifecycle_stage=stage,
                health=health,
                stage_since=since,
                health_since=since,
                first_seen_at=since,
                updated_at=since,
            )
        )
    return Fleet(states)


def daemon_registry() -> CollectorRegistry:
    """A fresh registry with the daemon's metrics, driven just enough that every labelled family has children."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    now = datetime.now(UTC)
    fleet = _sample_fleet(now)
    metrics.watch_fleet(fleet.snapshot, lambda: now)
    for platform in PLATFORMS:
        metrics.ensure_platform(platform)
    for endpoint in Endpoint:
        metrics.observe_api(endpoint.value, "200", 0.05)
    metrics.ensure_channel("default")  # the route a lone SLACK_WEBHOOK_URL gets
    return registry


def exported_families(registry: CollectorRegistry) -> dict[str, ExportedFamily]:
    """Every family of the registry's text exposition, under the name the kit uses (counters end in `_total`)."""
    parsed = list(text_string_to_metric_families(generate_latest(registry).decode()))
    stamped = {m.name for m in parsed if m.type in {"counter", "histogram"}}
    families: dict[str, ExportedFamily] = {}
    for metric in parsed:
        if metric.name.removesuffix("_created") in stamped and metric.name.endswith("_created"):
            continue  # the creation timestamps prometheus_client exports beside counters and histograms
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        samples = [s for s in metric.samples if not s.name.endswith("_created")]
        values: dict[str, set[str]] = {}
        for sample in samples:
            for label, value in sample.labels.items():
                if label != "le":
                    values.setdefault(label, set()).add(value)
        families[name] = ExportedFamily(
            type=metric.type,
            help=metric.documentation,
            labels=frozenset(values),
            series=len(samples),
            values={label: frozenset(v) for label, v in values.items()},
        )
    return families


EXPORTED: Final[dict[str, ExportedFamily]] = exported_families(daemon_registry())

# Read by the ops kit, to be exported by the alerting work (issue 3); see the module docstring.
PENDING_FAMILIES: Final[dict[str, MetricFamily]] = {
    "rutter_monitor_alerts_firing": _family("gauge", "alert", "severity", "platform"),
    "rutter_monitor_notifications_total": _family("counter", "channel", "outcome"),
    "rutter_monitor_notification_delay_seconds": _family("histogram"),
    "rutter_monitor_outbox_pending": _family("gauge"),
    "rutter_monitor_outbox_oldest_age_seconds": _family("gauge"),
}
PENDING_LABEL_VALUES: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("rutter_monitor_alerts_firing", "alert"): frozenset(a.value for a in AlertName),
    ("rutter_monitor_alerts_firing", "severity"): frozenset(s.value for s in Severity),
    ("rutter_monitor_notifications_total", "outcome"): frozenset({"sent", "retried", "rate_limited", "failed"}),
}


def pending_families() -> frozenset[str]:
    """Declared families whose labels the registry cannot show yet: not exported, or exported with no series."""
    return frozenset(name for name in PENDING_FAMILIES if name not in EXPORTED or not EXPORTED[name].series)


def _contract() -> dict[str, MetricFamily]:
    families = {name: MetricFamily(f.type, f.labels) for name, f in EXPORTED.items()}
    for name in pending_families():
        families[name] = PENDING_FAMILIES[name]
    return families


def _closed_values() -> dict[tuple[str, str], frozenset[str]]:
    closed = {
        (name, label): values
        for name, family in EXPORTED.items()
        for label, values in family.values.items()
        if label in CLOSED_LABELS
    }
    pending = pending_families()
    closed |= {key: values for key, values in PENDING_LABEL_VALUES.items() if key[0] in pending}
    return closed


METRIC_FAMILIES: Final[dict[str, MetricFamily]] = _contract()

# Series Prometheus itself attaches to every scrape: the ops kit may use them too.
SCRAPE_SERIES: Final[frozenset[str]] = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Closed label value sets, per (family, label). A matcher on one of these must use a listed value.
LABEL_VALUES: Final[dict[tuple[str, str], frozenset[str]]] = _closed_values()

# The Alertmanager alertnames of the per-connection alerts the daemon pushes itself (issue 3).
DAEMON_ALERTNAMES: Final[frozenset[str]] = frozenset(ALERTMANAGER_NAMES.values())

PROMETHEUS_JOB: Final[str] = "rutter-monitor"
DAEMON_PORT: Final[int] = Settings.model_fields["monitor_port"].default

# How the ops kit's PromQL is read against the contract. There is no PromQL parser for Python; these regular
# expressions cover what the kit writes (selectors, aggregations with by/without, vector matching, functions) and
# the syntax itself is proven by promtool in the tests.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"inf", "nan"}
)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher of a selector, such as `platform=~"$platform"`."""

    label: str
    op: str
    value: str


def promql_selectors(expr: str) -> list[tuple[str, tuple[Matcher, ...]]]:
    """Every selector of `expr`, `name{...}` with its matchers and a bare `name` with none."""
    found = []
    for match in _SELECTOR.finditer(expr):
        body = match.group(2).strip()
        matchers = tuple(Matcher(m.group(1), m.group(2), m.group(3)) for m in _MATCHER.finditer(body))
        consumed = "".join(m.group(0) for m in _MATCHER.finditer(body)).strip()
        if consumed != body:
            raise ValueError(f"cannot read the matchers {body!r} in {expr!r}")
        found.append((match.group(1), matchers))
    bare = promql_metric_names(_SELECTOR.sub(" ", expr))
    return found + [(name, ()) for name in sorted(bare)]


def promql_metric_names(expr: str) -> set[str]:
    """Every metric (or recording rule) name `expr` reads: identifiers that are neither functions nor keywords."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(1)
        if name.lower() in _KEYWORDS or re.match(r"\s*\(", text[match.end() :]):
            continue
        names.add(name)
    return names


def family_of(name: str) -> str | None:
    """The contract family a series name belongs to (`x_bucket` of histogram `x` is `x`), or None."""
    if name in METRIC_FAMILIES:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and METRIC_FAMILIES.get(base, MetricFamily("")).type == "histogram":
            return base
    return None

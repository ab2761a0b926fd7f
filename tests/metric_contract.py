"""The daemon's metric contract, as the ops kit (rules and dashboards) relies on it.

This is a stand-in: the cross-check tests read `METRIC_FAMILIES` until the daemon's live registry replaces it.
`LABEL_VALUES` lists the closed label sets the kit filters on, so a typo in a matcher value is caught too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One exported family: its Prometheus type and label names (without `le`, `job` and `instance`)."""

    type: str
    labels: frozenset[str] = frozenset()


def _family(kind: str, *labels: str) -> MetricFamily:
    return MetricFamily(kind, frozenset(labels))


METRIC_FAMILIES: Final[dict[str, MetricFamily]] = {
    "rutter_connections": _family("gauge", "lifecycle_stage", "health", "platform"),
    "rutter_connection_time_to_ready_seconds": _family("histogram", "platform"),
    "rutter_connection_time_to_historical_complete_seconds": _family("histogram", "platform"),
    "rutter_connection_stage_transitions_total": _family("counter", "platform", "from_stage", "to_stage"),
    "rutter_connection_health_transitions_total": _family("counter", "platform", "from_health", "to_health", "reason"),
    "rutter_connection_oldest_in_stage_seconds": _family("gauge", "platform", "lifecycle_stage"),
    "rutter_connections_deleted_total": _family("counter", "platform"),
    "rutter_webhooks_received_total": _family("counter", "code", "outcome"),
    "rutter_webhook_ack_seconds": _family("histogram"),
    "rutter_missed_webhooks_total": _family("counter", "platform", "code"),
    "rutter_api_requests_total": _family("counter", "endpoint", "status"),
    "rutter_api_request_duration_seconds": _family("histogram", "endpoint"),
    "rutter_monitor_last_inventory_success_timestamp_seconds": _family("gauge"),
    "rutter_monitor_inventory_interval_seconds": _family("gauge"),
    "rutter_monitor_poll_runs_total": _family("counter", "task", "outcome"),
    "rutter_monitor_status_refresh_lag_seconds": _family("gauge"),
    "rutter_monitor_rate_budget_used_ratio": _family("gauge"),
    "rutter_monitor_last_webhook_timestamp_seconds": _family("gauge"),
    "rutter_monitor_inbox_pending": _family("gauge"),
    "rutter_monitor_inbox_oldest_age_seconds": _family("gauge"),
    "rutter_monitor_inbox_commits_total": _family("counter"),
    "rutter_monitor_build_info": _family("gauge", "version"),
    "rutter_monitor_alerts_firing": _family("gauge", "alert", "severity", "platform"),
    "rutter_monitor_notifications_total": _family("counter", "channel", "outcome"),
    "rutter_monitor_notification_delay_seconds": _family("histogram"),
    "rutter_monitor_outbox_pending": _family("gauge"),
    "rutter_monitor_outbox_oldest_age_seconds": _family("gauge"),
}

# Series Prometheus itself attaches to every scrape: the ops kit may use them too.
SCRAPE_SERIES: Final[frozenset[str]] = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_STAGES = frozenset({"initial_sync", "historical_sync", "ongoing"})
_HEALTHS = frozenset({"healthy", "unhealthy", "needs_update", "disabled"})
_ENDPOINTS = frozenset({"list_connections", "connection_status", "connection"})

# Closed label value sets, per (family, label). A matcher on one of these must use a listed value.
LABEL_VALUES: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("rutter_connections", "lifecycle_stage"): _STAGES,
    ("rutter_connections", "health"): _HEALTHS,
    ("rutter_connection_oldest_in_stage_seconds", "lifecycle_stage"): _STAGES,
    ("rutter_connection_stage_transitions_total", "from_stage"): _STAGES,
    ("rutter_connection_stage_transitions_total", "to_stage"): _STAGES,
    ("rutter_connection_health_transitions_total", "from_health"): _HEALTHS,
    ("rutter_connection_health_transitions_total", "to_health"): _HEALTHS,
    ("rutter_webhooks_received_total", "outcome"): frozenset(
        {"accepted", "duplicate", "invalid_signature", "malformed", "too_large", "unavailable"}
    ),
    ("rutter_api_requests_total", "endpoint"): _ENDPOINTS,
    ("rutter_api_request_duration_seconds", "endpoint"): _ENDPOINTS,
    ("rutter_monitor_poll_runs_total", "task"): frozenset({"inventory", "status", "prune"}),
    ("rutter_monitor_poll_runs_total", "outcome"): frozenset({"success", "error"}),
    ("rutter_monitor_alerts_firing", "alert"): frozenset(
        {
            "connection_disabled",
            "connection_needs_update",
            "connection_unhealthy",
            "initial_sync_stalled",
            "historical_sync_stalled",
            "sync_stale",
        }
    ),
    ("rutter_monitor_alerts_firing", "severity"): frozenset({"critical", "warning"}),
    ("rutter_monitor_notifications_total", "outcome"): frozenset({"sent", "retried", "rate_limited", "failed"}),
}

# The Alertmanager alertnames of the per-connection alerts the daemon pushes itself (issue 3).
DAEMON_ALERTNAMES: Final[frozenset[str]] = frozenset(
    {
        "RutterConnectionDisabled",
        "RutterConnectionNeedsUpdate",
        "RutterConnectionUnhealthy",
        "RutterInitialSyncStalled",
        "RutterHistoricalSyncStalled",
        "RutterSyncStale",
    }
)

PROMETHEUS_JOB: Final[str] = "rutter-monitor"
DAEMON_PORT: Final[int] = 8080


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

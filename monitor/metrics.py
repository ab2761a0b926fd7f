"""Every metric, defined once on an injected CollectorRegistry. Label values come from bounded sets; gauges about
the fleet are built at scrape time from a Fleet snapshot by a custom collector, so no stale series remain."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor import __version__
from monitor.alerting.rules import SEVERITY, AlertName, Severity
from monitor.domain import (
    CONNECTION_CODES,
    DISABLED_REASONS,
    Health,
    LifecycleStage,
    Transition,
)
from monitor.fleet import FleetSnapshot
from monitor.rutter.client import Endpoint

MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
READY_BUCKETS = (
    30,
    MIN,
    2 * MIN,
    5 * MIN,
    10 * MIN,
    30 * MIN,
    HOUR,
    2 * HOUR,
    4 * HOUR,
    8 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
)
HISTORICAL_BUCKETS = (*READY_BUCKETS, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY)
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
API_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELAY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, MIN, 2 * MIN, 5 * MIN, 10 * MIN, 30 * MIN, HOUR)
NOTIFICATION_OUTCOMES = ("sent", "retried", "rate_limited", "failed")
FiringCounts = Mapping[tuple[AlertName, Severity, str], int]

WEBHOOK_OUTCOMES = ("accepted", "duplicate", "invalid_signature", "malformed", "too_large", "unavailable")
UNPARSED_CODE = "UNPARSED"
STAGE_MOVES = (
    (LifecycleStage.INITIAL_SYNC, LifecycleStage.HISTORICAL_SYNC),
    (LifecycleStage.INITIAL_SYNC, LifecycleStage.ONGOING),
    (LifecycleStage.HISTORICAL_SYNC, LifecycleStage.ONGOING),
)
MISSED_CODES = (
    "INITIAL_UPDATE",
    "HISTORICAL_UPDATE",
    "CONNECTION_NEEDS_UPDATE",
    "CONNECTION_DISABLED",
    "CONNECTION_UPDATED",
)


@dataclass
class Gauges:
    """Scrape-time values that are not about the fleet's cells; the app keeps them current."""

    inbox_pending: int = 0
    inbox_oldest_age_seconds: float = 0.0
    outbox_pending: int = 0
    outbox_oldest_age_seconds: float = 0.0
    status_refresh_lag_seconds: float = 0.0


class FleetCollector(Collector):
    """Emits, from one snapshot:

    rutter_connections{lifecycle_stage="ongoing",health="healthy",platform="SHOPIFY"} 42.0
    rutter_connection_oldest_in_stage_seconds{platform="SHOPIFY",lifecycle_stage="initial_sync"} 812.0
    """

    def __init__(self, snapshot: Callable[[], FleetSnapshot], now: Callable[[], datetime]) -> None:
        self._snapshot = snapshot
        self._now = now

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily("rutter_connections", "Connections by lifecycle stage, health and platform.",
                              labels=["lifecycle_stage", "health", "platform"]),
            GaugeMetricFamily("rutter_connection_oldest_in_stage_seconds",
                              "Time since the oldest connection still in this stage entered it.",
                              labels=["platform", "lifecycle_stage"]),
        ]  # fmt: skip

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        now = self._now()
        connections = GaugeMetricFamily(
            "rutter_connections",
            "Connections by lifecycle stage, health and platform.",
            labels=["lifecycle_stage", "health", "platform"],
        )
        oldest = GaugeMetricFamily(
            "rutter_connection_oldest_in_stage_seconds",
            "Time since the oldest connection still in this stage entered it.",
            labels=["platform", "lifecycle_stage"],
        )
        for platform in sorted(snap.platforms):
            for stage in LifecycleStage:
                for health in Health:
                    connections.add_metric(
                        [stage.value, health.value, platform], snap.counts.get((platform, stage, health), 0)
                    )
                entered = snap.oldest_stage_entry.get((platform, stage))
                age = max(0.0, (now - entered).total_seconds()) if entered is not None else 0.0
                oldest.add_metric([platform, stage.value], age)
        yield connections
        yield oldest


class AlertsCollector(Collector):
    """Emits, from the incident engine's state at scrape time, a cell per alert for every platform seen:

    rutter_monitor_alerts_firing{alert="connection_disabled",severity="critical",platform="SHOPIFY"} 2.0
    """

    def __init__(self, firing: Callable[[], FiringCounts], platforms: Callable[[], Iterable[str]]) -> None:
        self._firing = firing
        self._platforms = platforms

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "rutter_monitor_alerts_firing",
            "Incidents firing (announced alone or rolled up in a storm, not yet resolved), by alert and platform.",
            labels=["alert", "severity", "platform"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        counts = self._firing()
        platforms = set(self._platforms()) | {platform for _, _, platform in counts}
        family = self._family()
        for platform in sorted(platforms):
            for alert in AlertName:
                severity = SEVERITY[alert]
                family.add_metric([alert.value, severity.value, platform], counts.get((alert, severity, platform), 0))
        yield family


class Metrics:
    """The daemon's metric families. One instance per registry; tests give each test a fresh registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # No `*_created` samples: a third of the ~5,900 series, each costing a scrape as much as a real one
        # (bench/scale.py: render 44 -> 27 ms at 100,000 connections), and Prometheus does not need them. The
        # switch is prometheus_client's and process-wide; the daemon's registries are the only ones here.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        self.registry = registry
        self.gauges = Gauges()
        r = registry
        self.time_to_ready = Histogram(
            "rutter_connection_time_to_ready_seconds",
            "Time from a connection's creation to its initial sync being done (INITIAL_UPDATE).",
            ["platform"], buckets=READY_BUCKETS, registry=r,
        )  # fmt: skip
        self.time_to_historical = Histogram(
            "rutter_connection_time_to_historical_complete_seconds",
            "Time from a connection's creation to its last history batch, for connections that had batches.",
            ["platform"], buckets=HISTORICAL_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_transitions = Counter(
            "rutter_connection_stage_transitions_total",
            "Lifecycle stage changes observed, by platform and from/to stage.",
            ["platform", "from_stage", "to_stage"], registry=r,
        )  # fmt: skip
        self.health_transitions = Counter(
            "rutter_connection_health_transitions_total",
            "Health changes observed, by platform, from/to health and standardized disabled reason.",
            ["platform", "from_health", "to_health", "reason"], registry=r,
        )  # fmt: skip
        self.deleted = Counter(
            "rutter_connections_deleted_total",
            "Connections that disappeared from Rutter's list for two consecutive inventories.",
            ["platform"], registry=r,
        )  # fmt: skip
        self.webhooks = Counter(
            "rutter_webhooks_received_total",
            "Webhook deliveries by code (entity codes fold into ENTITY) and outcome.",
            ["code", "outcome"], registry=r,
        )  # fmt: skip
        self.webhook_ack = Histogram(
            "rutter_webhook_ack_seconds",
            "Time from a webhook request's arrival to its answer (durable store included).",
            buckets=ACK_BUCKETS, registry=r,
        )  # fmt: skip
        self.missed_webhooks = Counter(
            "rutter_missed_webhooks_total",
            "Changes seen by polling that no webhook announced within the grace time.",
            ["platform", "code"], registry=r,
        )  # fmt: skip
        self.api_requests = Counter(
            "rutter_api_requests_total",
            "Requests made to Rutter's API, by endpoint and HTTP status (or timeout/error).",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.api_duration = Histogram(
            "rutter_api_request_duration_seconds",
            "Duration of requests to Rutter's API.",
            ["endpoint"], buckets=API_BUCKETS, registry=r,
        )  # fmt: skip
        self.last_inventory = Gauge(
            "rutter_monitor_last_inventory_success_timestamp_seconds",
            "Unix time of the last inventory that listed every connection.", registry=r,
        )  # fmt: skip
        self.inventory_interval = Gauge(
            "rutter_monitor_inventory_interval_seconds",
            "The configured inventory interval, so rules can speak of a number of intervals.", registry=r,
        )  # fmt: skip
        self.poll_runs = Counter(
            "rutter_monitor_poll_runs_total", "Runs of the scheduled jobs, by task and outcome.",
            ["task", "outcome"], registry=r,
        )  # fmt: skip
        self.rate_budget_used = Gauge(
            "rutter_monitor_rate_budget_used_ratio",
            "Share of MONITOR_RATE_LIMIT used in the current 10 s window.", registry=r,
        )  # fmt: skip
        self.last_webhook = Gauge(
            "rutter_monitor_last_webhook_timestamp_seconds",
            "Unix time of the last webhook accepted.", registry=r,
        )  # fmt: skip
        self.inbox_commits = Counter(
            "rutter_monitor_inbox_commits_total",
            "Transactions that made webhooks durable; fewer than webhooks under load (group commit).", registry=r,
        )  # fmt: skip
        self.fetches_deferred = Counter(
            "rutter_monitor_status_fetches_deferred_total",
            "Status fetches for webhooks left to the status refresh: the rate budget could not send them in time.",
            registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            "rutter_monitor_build_info", "Always 1; the version of the running daemon.", ["version"], registry=r,
        )  # fmt: skip
        self.leader = Gauge(
            "rutter_monitor_leader",
            "1 on the replica that processes the inbox, polls Rutter and notifies; 0 on a standby.", registry=r,
        )  # fmt: skip
        self.notifications = Counter(
            "rutter_monitor_notifications_total",
            "Notification delivery attempts by route (the configured route's name) and outcome.",
            ["channel", "outcome"], registry=r,
        )  # fmt: skip
        self.notification_delay = Histogram(
            "rutter_monitor_notification_delay_seconds",
            "Time from a condition being detected (or cleared) to its notification being delivered.",
            buckets=DELAY_BUCKETS, registry=r,
        )  # fmt: skip
        self.build_info.labels(__version__).set(1)
        for task in ("inventory", "status", "prune"):
            for outcome in ("success", "error"):
                self.poll_runs.labels(task, outcome)
        for endpoint in Endpoint:  # the series set is fixed from the start, not from each endpoint's first use
            self.api_duration.labels(endpoint)
            self.api_requests.labels(endpoint, "200")
        for code in (*sorted(CONNECTION_CODES), "ENTITY", "OTHER"):
            for outcome in ("accepted", "duplicate"):
                self.webhooks.labels(code, outcome)
        for outcome in ("invalid_signature", "malformed", "too_large", "unavailable"):
            self.webhooks.labels(UNPARSED_CODE, outcome)
        self._platforms: set[str] = set()
        self._firing: Callable[[], FiringCounts] = dict
        self._scrape_gauges()
        r.register(AlertsCollector(lambda: self._firing(), lambda: self._platforms))

    def _scrape_gauges(self) -> None:
        g = self.gauges
        Gauge("rutter_monitor_inbox_pending", "Accepted webhooks not yet processed.",
              registry=self.registry).set_function(lambda: g.inbox_pending)  # fmt: skip
        Gauge("rutter_monitor_inbox_oldest_age_seconds", "Age of the oldest accepted webhook not yet processed.",
              registry=self.registry).set_function(lambda: g.inbox_oldest_age_seconds)  # fmt: skip
        Gauge("rutter_monitor_status_refresh_lag_seconds",
              "How far the most overdue status refresh is behind its schedule.",
              registry=self.registry).set_function(lambda: g.status_refresh_lag_seconds)  # fmt: skip
        Gauge("rutter_monitor_outbox_pending", "Notifications waiting in the outbox for delivery.",
              registry=self.registry).set_function(lambda: g.outbox_pending)  # fmt: skip
        Gauge("rutter_monitor_outbox_oldest_age_seconds", "Age of the oldest notification waiting in the outbox.",
              registry=self.registry).set_function(lambda: g.outbox_oldest_age_seconds)  # fmt: skip

    def watch_fleet(self, snapshot: Callable[[], FleetSnapshot], now: Callable[[], datetime]) -> None:
        """Register the scrape-time collector of fleet gauges."""
        self.registry.register(FleetCollector(snapshot, now))

    def watch_alerts(self, firing: Callable[[], FiringCounts]) -> None:
        """Read firing incidents from the engine at scrape time."""
        self._firing = firing

    def ensure_channel(self, channel: str) -> None:
        """Pre-create the notification counters of one route."""
        for outcome in NOTIFICATION_OUTCOMES:
            self.notifications.labels(channel, outcome)

    def ensure_platform(self, platform: str) -> None:
        """Pre-create the label children of a platform so the series set depends on platforms, not connections."""
        if platform in self._platforms:
            return
        self._platforms.add(platform)
        self.time_to_ready.labels(platform)
        self.time_to_historical.labels(platform)
        self.deleted.labels(platform)
        for from_stage, to_stage in STAGE_MOVES:
            self.stage_transitions.labels(platform, from_stage.value, to_stage.value)
        for from_health in Health:
            for to_health in Health:
                if from_health is to_health:
                    continue
                self.health_transitions.labels(platform, from_health.value, to_health.value, "")
                if to_health is Health.DISABLED:
                    for reason in DISABLED_REASONS:
                        self.health_transitions.labels(platform, from_health.value, to_health.value, reason)
        for code in MISSED_CODES:
            self.missed_webhooks.labels(platform, code)

    def observe_transition(self, platform: str, transition: Transition) -> None:
        """Count one recorded transition."""
        self.ensure_platform(platform)
        if transition.dimension == "lifecycle_stage":
            self.stage_transitions.labels(platform, transition.from_, transition.to).inc()
        elif transition.dimension == "health":
            self.health_transitions.labels(platform, transition.from_, transition.to, transition.reason).inc()
        elif transition.dimension == "presence" and transition.to == "deleted":
            self.deleted.labels(platform).inc()

    def observe_api(self, endpoint: str, status: str, seconds: float) -> None:
        """The Rutter client's observer hook."""
        self.api_requests.labels(endpoint, status).inc()
        self.api_duration.labels(endpoint).observe(seconds)

"""What a scrape of the daemon's registry costs: no `*_created` samples, and a series set that depends on the
platforms, never on the number of connections (bench/scale.py measures the render time itself)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.domain import ConnectionState, Health, LifecycleStage
from monitor.fleet import Fleet
from monitor.metrics import Metrics
from monitor.rutter.client import Endpoint

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PLATFORMS = ("SHOPIFY", "NETSUITE", "XERO")


def registry_for(connections: int) -> CollectorRegistry:
    """The daemon's metrics over a fleet of `connections` spread over PLATFORMS, every stage and health."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    stages, healths = tuple(LifecycleStage), tuple(Health)
    fleet = Fleet(
        ConnectionState(
            id=f"conn-{n}",
            platform=PLATFORMS[n % len(PLATFORMS)],
            lifecycle_stage=stages[n % len(stages)],
            health=healths[n % len(healths)],
            stage_since=NOW - timedelta(minutes=n),
            health_since=NOW,
            first_seen_at=NOW,
            updated_at=NOW,
        )
        for n in range(connections)
    )
    metrics.watch_fleet(fleet.snapshot, lambda: NOW)
    for state in fleet.live():
        metrics.ensure_platform(state.platform)
    for endpoint in Endpoint:
        metrics.observe_api(endpoint.value, "200", 0.05)
    metrics.time_to_ready.labels("SHOPIFY").observe(120.0)
    metrics.stage_transitions.labels("SHOPIFY", "initial_sync", "ongoing").inc()
    return registry


def samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    text = generate_latest(registry).decode()
    return [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_the_exposition_has_no_created_samples_and_keeps_every_counter_and_histogram() -> None:
    """No `*_created` sample is exported, while counters, histogram buckets, sums and counts all are."""
    names = {name for name, _ in samples(registry_for(60))}
    assert not [name for name in names if name.endswith("_created")]
    for name in (
        "rutter_connection_stage_transitions_total",
        "rutter_connection_health_transitions_total",
        "rutter_connection_time_to_ready_seconds_bucket",
        "rutter_connection_time_to_ready_seconds_sum",
        "rutter_connection_time_to_ready_seconds_count",
        "rutter_api_requests_total",
        "rutter_webhooks_received_total",
        "rutter_connections",
        "rutter_connection_oldest_in_stage_seconds",
    ):
        assert name in names, name


def test_the_series_are_the_same_for_12_and_6000_connections_on_the_same_platforms() -> None:
    """A fleet 500 times larger over the same platforms exports exactly the same series."""
    assert sorted(samples(registry_for(12))) == sorted(samples(registry_for(6_000)))

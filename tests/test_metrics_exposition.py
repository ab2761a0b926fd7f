"""What a scrape of the daemon's registry costs: no `*_created` samples, and a series set that depends on the
platforms, never on the number of connections (bench/scale.py measures the render time itself), and the cached
writer that renders it says exactly what prometheus_client would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.domain import ConnectionState, Health, LifecycleStage
from monitor.exposition import Exposition, _children
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


def families(text: str) -> list[tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
    return [
        (
            family.name,
            family.type,
            family.documentation,
            [(s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples],
        )
        for family in text_string_to_metric_families(text)
    ]


async def test_the_daemons_exposition_says_what_prometheus_clients_says() -> None:
    """The cached writer's text parses to the same families, help, types, samples and values as the library's,
    label values that need escaping included, on the first render and on the cached ones after it."""
    registry = registry_for(300)
    odd = Counter("odd_labels", "Help with a \\ backslash\nand a line.", ["v"], registry=registry)
    odd.labels('quote " backslash \\ newline \n end').inc(3)
    exposition = Exposition(registry)
    ours = (await exposition.render()).decode()
    assert families(ours) == families(generate_latest(registry).decode())
    assert ours.count("# TYPE ") == len(families(ours))
    assert (await exposition.render()).decode() == ours, "the second render, from the cached prefixes, differs"


async def test_the_body_is_byte_for_byte_the_librarys_for_every_shape_it_reads_or_collects() -> None:
    """Counters, gauges and histograms read from their children (labelled or not, a histogram whose first bucket is
    negative and so has no _sum), set_function gauges, a summary and the custom collectors, interleaved in
    registration order: the body is generate_latest's, byte for byte, on the first render and the cached ones."""
    registry = registry_for(300)
    negative = Histogram("neg_first_bucket", "No sum.", ["k"], buckets=[-1.0, 0.0, 1.0], registry=registry)
    negative.labels("a").observe(0.5)
    Summary("a_summary", "A summary.", registry=registry).observe(2.0)
    Gauge("plain_gauge", "Unlabelled.", registry=registry).set(-3.5)
    odd = Counter("odd_labels", "Help with a \\ backslash\nand a line.", ["v"], registry=registry)
    odd.labels('quote " backslash \\ newline \n end').inc(3)
    exposition = Exposition(registry)
    assert await exposition.render() == generate_latest(registry)
    odd.labels("second").inc()
    assert await exposition.render(slice_seconds=0.0) == generate_latest(registry)


def test_only_the_librarys_own_counters_gauges_and_histograms_are_read_from_their_children() -> None:
    """A subclass, a set_function gauge, a summary and a custom collector are collected the usual way."""
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry)
    counter.labels("a").inc()
    counter.labels("b")
    assert [values for values, _ in _children(counter) or []] == [("a",), ("b",)]
    histogram = Histogram("h", "h", registry=registry)
    assert _children(histogram) == [((), histogram)]

    class Mine(Counter):
        pass

    computed = Gauge("g", "g", registry=registry)
    computed.set_function(lambda: 1.0)
    for other in (Mine("m", "m", registry=registry), computed, Summary("s", "s", registry=registry), registry):
        assert _children(other) is None


async def test_a_value_change_shows_in_the_next_scrape_through_the_cache() -> None:
    """Prefixes are cached, values never: a counter increment appears in the next render."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    exposition = Exposition(registry)
    metrics.ensure_platform("SHOPIFY")
    line = 'rutter_connections_deleted_total{platform="SHOPIFY"} '
    assert f"{line}0.0\n" in (await exposition.render()).decode()
    metrics.deleted.labels("SHOPIFY").inc(2)
    assert f"{line}2.0\n" in (await exposition.render()).decode()


async def test_a_family_the_writer_does_not_know_falls_back_to_the_library() -> None:
    """An info metric (or any shape the writer does not render) makes the whole scrape the library's own."""
    registry = registry_for(10)
    Info("odd_build", "An info family.", registry=registry).info({"version": "1"})
    exposition = Exposition(registry)
    assert await exposition.render() == generate_latest(registry)


async def test_the_sliced_render_writes_the_same_body_and_lets_the_loop_run_between_slices() -> None:
    """/metrics renders in slices with the event loop's turn between them: the body is byte for byte the one-go
    body, and a callback scheduled meanwhile runs before the render ends (with a zero slice, at every pause)."""
    registry = registry_for(300)
    exposition = Exposition(registry)
    whole = await exposition.render(slice_seconds=float("inf"))  # in one go
    ran: list[int] = []
    loop = asyncio.get_running_loop()
    for n in range(5):
        loop.call_soon(ran.append, n)
    sliced = await exposition.render(slice_seconds=0.0)
    assert sliced == whole
    assert ran == [0, 1, 2, 3, 4], "the render never gave the loop a turn"


async def test_the_sliced_render_falls_back_to_the_library_too() -> None:
    registry = registry_for(10)
    Info("odd_build", "An info family.", registry=registry).info({"version": "1"})
    assert await Exposition(registry).render(slice_seconds=0.0) == generate_latest(registry)

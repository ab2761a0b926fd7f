"""Loading the fleet at start-up (SqlStore.load_connections) at scale: streamed in partitions, the same states
as were saved, values that repeat across connections shared, and no moment holding the whole result twice."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from monitor.clock import FakeClock
from monitor.domain import ConnectionState, Health, LifecycleStage, PendingWebhook
from monitor.store.sql import SqlStore, open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLATFORMS = ("SHOPIFY", "NETSUITE", "QUICKBOOKS")
STAGES = tuple(LifecycleStage)
HEALTHS = tuple(Health)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(database_url, clock=FakeClock(T0 + timedelta(days=1)))
    yield opened
    await opened.close()


def fleet(n: int) -> list[ConnectionState]:
    """`n` states in id order: timestamps both shared (an inventory's `now`) and distinct, some deleted."""
    now = T0 + timedelta(hours=1)
    states = []
    for i in range(n):
        distinct = T0 - timedelta(seconds=i)
        states.append(
            ConnectionState(
                id=f"conn-{i:06d}",
                platform="".join(PLATFORMS[i % len(PLATFORMS)]),  # a new string object per state
                lifecycle_stage=STAGES[i % len(STAGES)],
                health=HEALTHS[i % len(HEALTHS)],
                stage_since=distinct,
                health_since=now,
                first_seen_at=now,
                updated_at=now,
                access_token=f"tok-{i}",
                created_at=distinct - timedelta(days=1),
                name=f"Store {i}",
                link_url=f"https://link.rutterapi.com/connection/conn-{i:06d}",
                disabled_reason="SHOP_IS_LOCKED" if HEALTHS[i % len(HEALTHS)] is Health.DISABLED else None,
                is_disabled=HEALTHS[i % len(HEALTHS)] is Health.DISABLED,
                last_status_at=now if i % 2 else None,
                deleted_at=now if i % 97 == 0 else None,
                pending_webhooks=(PendingWebhook("INITIAL_UPDATE", now),) if i % 50 == 0 else (),
            )
        )
    return states


async def test_a_fleet_of_several_partitions_loads_whole_in_id_order(store: SqlStore) -> None:
    """12,345 connections (three fetch partitions, more distinct timestamps than a memo keeps) load as saved."""
    saved = fleet(12_345)
    await store.save(saved)
    loaded = await store.load_connections(include_deleted=True)
    assert loaded == saved
    assert all(s.stage_since.tzinfo is UTC and s.health_since.tzinfo is UTC for s in loaded)
    live = await store.load_connections()
    assert live == [s for s in saved if s.deleted_at is None]


async def test_equal_timestamps_and_platforms_of_loaded_states_are_one_object_each(store: SqlStore) -> None:
    """States loaded together share one object per equal timestamp and platform name, as an inventory's do."""
    await store.save(fleet(300))
    loaded = await store.load_connections(include_deleted=True)
    assert len({id(s.first_seen_at) for s in loaded}) == 1
    assert len({id(s.updated_at) for s in loaded}) == 1
    assert len({id(s.platform) for s in loaded}) == len(PLATFORMS)
    assert len({id(s.stage_since) for s in loaded}) == 300  # distinct values stay distinct
    again = await store.load_connections(include_deleted=True)
    assert again == loaded


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_loading_never_holds_the_rows_and_the_states_at_once(store: SqlStore) -> None:
    """A 15,000-connection load peaks within 1.5x of what its states keep (fetching every row before building
    the states peaked at 2.1x)."""
    await store.save(fleet(15_000))
    await store.ping()  # the pool's connection is open before measuring
    tracemalloc.start()
    try:
        loaded = await store.load_connections(include_deleted=True)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(loaded) == 15_000
    assert peak < 1.5 * kept, (peak, kept)

"""The inbox processor on a real SQLite store: exactly-once processing and poison events set aside."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.domain import ConnectionDetails, ConnectionState, Health, LifecycleStage, StatusSnapshot
from monitor.fleet import Fleet
from monitor.lifecycle import LifecycleSettings
from monitor.metrics import Metrics
from monitor.processor import Processor
from monitor.recorder import Recorder
from monitor.store import InboxItem
from monitor.store.sql import SqlStore, open_store
from tests.states import status_snapshot


@dataclasses.dataclass
class World:
    """A real SQLite store on a fake clock, and the metrics a recorder over it reports to."""

    clock: FakeClock
    store: SqlStore
    metrics: Metrics = dataclasses.field(default_factory=lambda: Metrics(CollectorRegistry()))

    async def recorder(self, states: list[ConnectionState], *, store: Any = None) -> tuple[Recorder, Fleet]:
        """`states` saved and known to a fresh fleet; the recorder persists through `store` (the real one if None)."""
        await self.store.save(states)
        fleet = Fleet(states)
        return Recorder(store or self.store, fleet, self.metrics, LifecycleSettings()), fleet


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/p.db", clock=clock)
    try:
        yield World(clock, store)
    finally:
        await store.close()


class FlakyRutter:
    """A status source that answers for every connection but one, for which it has a bug (not a Rutter error)."""

    def __init__(self, broken: str) -> None:
        self.broken = broken

    async def fetch_status(self, access_token: str) -> StatusSnapshot:
        if access_token == f"token-{self.broken}":
            raise RuntimeError("a bug in the client")
        return status_snapshot(access_token.removeprefix("token-"))

    async def fetch_connection(self, access_token: str) -> ConnectionDetails:
        cid = access_token.removeprefix("token-")
        return ConnectionDetails(id=cid, platform="SHOPIFY", store_name=f"store {cid}")


def item(cid: str, now: datetime) -> InboxItem:
    body = {"type": "CONNECTION", "code": "INITIAL_UPDATE", "connection_id": cid, "access_token": "[redacted]"}
    return InboxItem(
        received_at=now,
        code="INITIAL_UPDATE",
        connection_id=cid,
        body_hash=f"hash-{cid}",
        body=json.dumps(body),
        access_token=f"token-{cid}",
        is_lifecycle=True,
    )


async def test_a_poison_event_is_set_aside_and_the_rest_is_processed(world: World) -> None:
    """An event whose processing raises a bug is set aside; the others in its batch are processed once."""
    clock, store = world.clock, world.store
    recorder, fleet = await world.recorder([])
    processor = Processor(recorder, clock, FlakyRutter(broken="c2"))
    await store.insert_inbox([item(cid, clock.now()) for cid in ("c1", "c2", "c3")])
    assert await processor.drain() == 3
    assert processor.set_aside == 1
    assert (await store.inbox_backlog())[0] == 0
    assert sorted(s.id for s in fleet.live()) == ["c1", "c3"]
    assert await processor.drain() == 0


class GatedRutter:
    """A Rutter whose status answers are held until the test releases them."""

    def __init__(self, statuses: dict[str, StatusSnapshot]) -> None:
        self.statuses = statuses
        self.release = asyncio.Event()

    async def fetch_status(self, access_token: str) -> StatusSnapshot:
        await self.release.wait()
        return self.statuses[access_token.removeprefix("token-")]

    async def fetch_connection(self, access_token: str) -> ConnectionDetails:
        cid = access_token.removeprefix("token-")
        return ConnectionDetails(id=cid, platform="XERO")


def known(cid: str, stage: LifecycleStage, now: datetime) -> ConnectionState:
    return ConnectionState(
        id=cid,
        platform="XERO",
        lifecycle_stage=stage,
        health=Health.HEALTHY,
        stage_since=now,
        health_since=now,
        first_seen_at=now,
        updated_at=now,
        access_token=f"token-{cid}",
        created_at=now,
        last_status_at=now,
    )


def status(cid: str, *, ready: bool, disabled: bool = False) -> StatusSnapshot:
    reason = "SHOP_IS_LOCKED" if disabled else None
    return status_snapshot(cid, platform="XERO", is_ready=ready, is_disabled=disabled, disabled_reason=reason)


async def test_a_slow_status_holds_back_a_stage_change_but_not_a_disable(world: World) -> None:
    """With Rutter slow to answer, the disable commits after the short wait (without its reason) while the
    INITIAL_UPDATE waits for its status and then makes one straight initial_sync -> ongoing transition."""
    clock, store = world.clock, world.store
    now = clock.now()
    states = [known("ready-1", LifecycleStage.INITIAL_SYNC, now), known("off-1", LifecycleStage.ONGOING, now)]
    recorder, fleet = await world.recorder(states)
    rutter = GatedRutter(
        {"ready-1": status("ready-1", ready=True), "off-1": status("off-1", ready=True, disabled=True)}
    )
    processor = Processor(recorder, clock, rutter, fast_wait=0.05)
    disable = dataclasses.replace(item("off-1", now), code="CONNECTION_DISABLED", body_hash="h-off")
    await store.insert_inbox([item("ready-1", now), disable])
    task = asyncio.create_task(processor.drain())
    for _ in range(500):
        if fleet.get("off-1").health is Health.DISABLED:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert fleet.get("off-1").health is Health.DISABLED  # type: ignore[union-attr]
    assert fleet.get("ready-1").lifecycle_stage is LifecycleStage.INITIAL_SYNC  # type: ignore[union-attr]
    rutter.release.set()
    assert await task == 2
    assert fleet.get("ready-1").lifecycle_stage is LifecycleStage.ONGOING  # type: ignore[union-attr]
    history = [(t.from_, t.to) for t in await store.transitions("ready-1")]
    assert history == [("initial_sync", "ongoing")]
    assert "off-1" in recorder.urgent  # its reason comes with the next status refresh


class CountingRutter:
    """Answers every connection as disabled, with its store name, and counts the detail fetches."""

    def __init__(self) -> None:
        self.details: list[str] = []

    async def fetch_status(self, access_token: str) -> StatusSnapshot:
        return status(access_token.removeprefix("token-"), ready=True, disabled=True)

    async def fetch_connection(self, access_token: str) -> ConnectionDetails:
        cid = access_token.removeprefix("token-")
        self.details.append(cid)
        return ConnectionDetails(id=cid, platform="XERO", store_name=f"store {cid}")


async def test_a_disable_fetches_the_store_name_only_when_none_is_known(world: World) -> None:
    """A disable's alert is named and routed by store name: fetched with its status once, then never again."""
    clock, store = world.clock, world.store
    now = clock.now()
    named = dataclasses.replace(known("named", LifecycleStage.ONGOING, now), store_name="Named Store")
    states = [known("anon", LifecycleStage.ONGOING, now), named]
    recorder, fleet = await world.recorder(states)
    rutter = CountingRutter()
    processor = Processor(recorder, clock, rutter)
    disables = [
        dataclasses.replace(item(cid, now), code="CONNECTION_DISABLED", body_hash=f"h-{cid}")
        for cid in ("anon", "named")
    ]
    await store.insert_inbox(disables)
    assert await processor.drain() == 2
    assert rutter.details == ["anon"]
    anon = fleet.get("anon")
    assert anon is not None
    assert anon.store_name == "store anon"
    assert anon.health is Health.DISABLED
    again = dataclasses.replace(disables[0], body_hash="h-anon-2")
    await store.insert_inbox([again])
    assert await processor.drain() == 1
    assert rutter.details == ["anon"]


class RecordingRutter:
    """Answers every connection as disabled and notes, for each status asked, how many rows were processed then."""

    def __init__(self) -> None:
        self.processor: Processor | None = None
        self.asked: list[tuple[str, int]] = []

    async def fetch_status(self, access_token: str) -> StatusSnapshot:
        cid = access_token.removeprefix("token-")
        assert self.processor is not None
        self.asked.append((cid, self.processor.processed))
        return status(cid, ready=True, disabled=True)

    async def fetch_connection(self, access_token: str) -> ConnectionDetails:
        cid = access_token.removeprefix("token-")
        return ConnectionDetails(id=cid, platform="XERO", store_name=f"store {cid}")


def entity(cid: str, n: int, now: datetime) -> InboxItem:
    """An ORDER_CREATED webhook, the n-th: no token kept (entity webhooks need none once the connection is known)."""
    body = json.dumps({"type": "ORDER", "code": "ORDER_CREATED", "connection_id": cid, "n": n})
    changes: dict[str, Any] = {"code": "ORDER_CREATED", "body": body, "body_hash": f"entity-{n}"}
    return dataclasses.replace(item(cid, now), **changes, access_token=None, is_lifecycle=False)


async def test_a_disable_behind_an_entity_flood_goes_in_the_first_batch(world: World) -> None:
    """A CONNECTION_DISABLED that arrived after 45 entity webhooks is decided before any of them: the lifecycle lane
    comes first. The entity webhooks are then all processed, and stamp when data last arrived."""
    clock, store = world.clock, world.store
    now = clock.now()
    states = [known("busy", LifecycleStage.ONGOING, now), known("off-1", LifecycleStage.ONGOING, now)]
    recorder, fleet = await world.recorder(states)
    rutter = RecordingRutter()
    processor = Processor(recorder, clock, rutter, batch_size=10)
    rutter.processor = processor
    disable = dataclasses.replace(item("off-1", now), code="CONNECTION_DISABLED", body_hash="h-off")
    await store.insert_inbox([entity("busy", n, now) for n in range(45)])
    await store.insert_inbox([disable])
    clock.set(now + timedelta(minutes=1))
    assert await processor.drain() == 46
    assert rutter.asked == [("off-1", 0)]  # fetched for the first batch, before any entity row was processed
    off = fleet.get("off-1")
    assert off is not None
    assert off.health is Health.DISABLED
    assert off.disabled_reason == "SHOP_IS_LOCKED"
    busy = fleet.get("busy")
    assert busy is not None
    assert busy.last_data_at == now + timedelta(minutes=1)
    assert (await store.inbox_backlog())[0] == 0


def deferred(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("rutter_monitor_status_fetches_deferred_total")
    assert value is not None
    return value


async def test_a_status_the_budget_cannot_send_in_time_is_left_to_the_status_poll(world: World) -> None:
    """When the rate budget cannot send a known connection's fetch within the fast wait, the processor does not
    start it: the disable is committed at once, without its reason, and the connection goes first in the status
    poll. The fetches the budget can send still go, and a connection never seen still waits for its own."""
    clock, store = world.clock, world.store
    now = clock.now()
    states = [known(cid, LifecycleStage.ONGOING, now) for cid in ("off-1", "off-2", "off-3")]
    recorder, fleet = await world.recorder(states)
    metrics = world.metrics
    rutter = RecordingRutter()
    asked_ahead: list[int] = []

    def budget(ahead: int) -> float:  # room for one request now, then 4 s until the next
        asked_ahead.append(ahead)
        return 0.0 if ahead < 1 else 4.0

    processor = Processor(recorder, clock, rutter, fast_wait=0.5, fetch_delay=budget)
    rutter.processor = processor
    disables = [
        dataclasses.replace(item(cid, now), code="CONNECTION_DISABLED", body_hash=f"h-{cid}")
        for cid in ("off-1", "off-2", "off-3")
    ]
    await store.insert_inbox([*disables, item("new-1", now)])
    assert await processor.drain() == 4
    # the never-seen connection first (it must wait, and it takes 2 requests: status and details), so the
    # budget's one free request is spent on it; each disable is then judged behind those two
    assert rutter.asked == [("new-1", 0)]
    assert asked_ahead == [2, 2, 2]
    assert deferred(metrics) == 3
    for cid in ("off-1", "off-2", "off-3"):
        state = fleet.get(cid)
        assert state is not None
        assert state.health is Health.DISABLED
        assert state.disabled_reason is None  # the status poll brings it
        assert cid in recorder.urgent
    assert fleet.get("new-1") is not None


async def test_fetches_the_budget_can_send_in_time_all_go(world: World) -> None:
    """With room in the budget, every disable's status is fetched and nothing is deferred."""
    clock, store = world.clock, world.store
    now = clock.now()
    states = [
        dataclasses.replace(known(cid, LifecycleStage.ONGOING, now), store_name=f"store {cid}")
        for cid in ("off-1", "off-2")
    ]
    recorder, fleet = await world.recorder(states)
    metrics = world.metrics
    rutter = RecordingRutter()
    processor = Processor(recorder, clock, rutter, fast_wait=0.5, fetch_delay=lambda ahead: 0.1 * ahead)
    rutter.processor = processor
    await store.insert_inbox(
        [
            dataclasses.replace(item(cid, now), code="CONNECTION_DISABLED", body_hash=f"h-{cid}")
            for cid in ("off-1", "off-2")
        ]
    )
    assert await processor.drain() == 2
    assert sorted(cid for cid, _ in rutter.asked) == ["off-1", "off-2"]
    assert deferred(metrics) == 0
    assert [fleet.get(cid).disabled_reason for cid in ("off-1", "off-2")] == ["SHOP_IS_LOCKED"] * 2  # type: ignore[union-attr]


class ReadSpy:
    """The store, with the size of each inbox read noted."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.limits: list[int] = []

    async def unprocessed_inbox(self, limit: int) -> list[Any]:
        self.limits.append(limit)
        rows: list[Any] = await self._store.unprocessed_inbox(limit)
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_batches_grow_only_while_the_processor_is_behind(world: World) -> None:
    """Rows that waited a second or more are read in doubling batches up to the cap, until a read comes back short;
    rows that arrive and are read at once stay in small batches, however many there are."""
    clock, store = world.clock, world.store
    now = clock.now()
    states = [known("busy", LifecycleStage.ONGOING, now)]
    spy = ReadSpy(store)
    recorder, _ = await world.recorder(states, store=spy)
    processor = Processor(recorder, clock, None, batch_size=10, max_batch=40, catch_up_after=1.0)
    await store.insert_inbox([entity("busy", n, now) for n in range(100)])
    assert await processor.drain() == 100  # fresh: read as soon as they came
    assert spy.limits == [10] * 11
    await store.insert_inbox([entity("busy", n, now) for n in range(100, 200)])
    clock.set(now + timedelta(seconds=1))  # the same rows, a second late
    spy.limits.clear()
    assert await processor.drain() == 100
    assert spy.limits == [10, 20, 40, 40, 10]  # 10 + 20 + 40 + 30, short: back to 10 for the last (empty) read
    assert (await store.inbox_backlog())[0] == 0

"""The inbox processor on a real SQLite store: exactly-once processing and poison events set aside."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.domain import ConnectionDetails, ConnectionState, Health, LifecycleStage, StatusSnapshot
from monitor.fleet import Fleet
from monitor.lifecycle import LifecycleSettings
from monitor.metrics import Metrics
from monitor.processor import Processor
from monitor.recorder import Recorder
from monitor.store import InboxItem
from monitor.store.sql import open_store


class FlakyRutter:
    """A status source that answers for every connection but one, for which it has a bug (not a Rutter error)."""

    def __init__(self, broken: str) -> None:
        self.broken = broken

    async def fetch_status(self, access_token: str) -> StatusSnapshot:
        if access_token == f"token-{self.broken}":
            raise RuntimeError("a bug in the client")
        cid = access_token.removeprefix("token-")
        return StatusSnapshot(
            connection_id=cid,
            platform="SHOPIFY",
            is_ready=True,
            needs_update=False,
            is_disabled=False,
            historical_sync_completed=True,
        )

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


async def test_a_poison_event_is_set_aside_and_the_rest_is_processed(tmp_path: Path) -> None:
    """An event whose processing raises a bug is set aside; the others in its batch are processed once."""
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/p.db", clock=clock)
    try:
        fleet = Fleet()
        recorder = Recorder(store, fleet, Metrics(CollectorRegistry()), LifecycleSettings())
        processor = Processor(recorder, clock, FlakyRutter(broken="c2"))
        await store.insert_inbox([item(cid, clock.now()) for cid in ("c1", "c2", "c3")])
        assert await processor.drain() == 3
        assert processor.set_aside == 1
        assert (await store.inbox_backlog())[0] == 0
        assert sorted(s.id for s in fleet.live()) == ["c1", "c3"]
        assert await processor.drain() == 0
    finally:
        await store.close()


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
    return StatusSnapshot(
        connection_id=cid,
        platform="XERO",
        is_ready=ready,
        needs_update=False,
        is_disabled=disabled,
        historical_sync_completed=True,
        disabled_reason="SHOP_IS_LOCKED" if disabled else None,
    )


async def test_a_slow_status_holds_back_a_stage_change_but_not_a_disable(tmp_path: Path) -> None:
    """With Rutter slow to answer, the disable commits after the short wait (without its reason) while the
    INITIAL_UPDATE waits for its status and then makes one straight initial_sync -> ongoing transition."""
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/p.db", clock=clock)
    try:
        now = clock.now()
        states = [known("ready-1", LifecycleStage.INITIAL_SYNC, now), known("off-1", LifecycleStage.ONGOING, now)]
        await store.save(states)
        fleet = Fleet(states)
        recorder = Recorder(store, fleet, Metrics(CollectorRegistry()), LifecycleSettings())
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
    finally:
        await store.close()


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


async def test_a_disable_fetches_the_store_name_only_when_none_is_known(tmp_path: Path) -> None:
    """A disable's alert is named and routed by store name: fetched with its status once, then never again."""
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/p.db", clock=clock)
    try:
        now = clock.now()
        named = dataclasses.replace(known("named", LifecycleStage.ONGOING, now), store_name="Named Store")
        states = [known("anon", LifecycleStage.ONGOING, now), named]
        await store.save(states)
        fleet = Fleet(states)
        recorder = Recorder(store, fleet, Metrics(CollectorRegistry()), LifecycleSettings())
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
    finally:
        await store.close()

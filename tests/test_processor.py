"""The inbox processor on a real SQLite store: exactly-once processing and poison events set aside."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.domain import ConnectionDetails, StatusSnapshot
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

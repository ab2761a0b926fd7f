"""The SQLite writes in one thread hop: the same rows as the engine would write, durable, patient with other
writers, and failing as a StoreError."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.store import InboxItem, StoreError
from monitor.store.sql import open_store

T0 = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)


def item(n: int, *, lifecycle: bool = False, cid: str | None = "c1") -> InboxItem:
    return InboxItem(
        received_at=T0,
        code="CONNECTION_DISABLED" if lifecycle else "ORDER_CREATED",
        connection_id=cid,
        body_hash=f"{n:064x}",
        body=f'{{"code":"ORDER_CREATED","n":{n},"access_token":"[redacted]"}}',
        access_token=f"tok-{n}" if cid else None,
        is_lifecycle=lifecycle,
    )


async def test_a_batch_is_stored_in_order_and_read_back_identical(tmp_path: Path) -> None:
    """Ids come back in the items' order (repeats included), and the engine reads every field back as written."""
    store = await open_store(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        items = [item(1), item(2, lifecycle=True), item(1), item(3, cid=None)]
        ids = await store.insert_inbox(items)
        assert ids == sorted(ids)
        assert len(set(ids)) == 4
        assert store.commits == 1
        rows = await store.unprocessed_inbox(10)
        assert [(r.id, r.item) for r in rows] == list(zip(ids, items, strict=True))
        assert (await store.dedupe_rows(T0))[1].is_lifecycle is True
    finally:
        await store.close()


async def test_a_writer_holding_the_lock_delays_the_insert_without_blocking_the_event_loop(tmp_path: Path) -> None:
    """While another connection holds SQLite's write lock, the insert waits in its thread; the loop keeps running."""
    path = tmp_path / "m.db"
    store = await open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        insert = asyncio.create_task(store.insert_inbox([item(1)]))
        for _ in range(20):  # the loop turns (each sleep returns) while the insert is parked on the lock
            await asyncio.sleep(0.005)
        assert not insert.done()
        other.execute("COMMIT")
        assert len(await asyncio.wait_for(insert, timeout=10)) == 1
    finally:
        other.close()
        await store.close()


async def test_acknowledged_rows_are_on_disk_when_the_call_returns(tmp_path: Path) -> None:
    """A second connection opened right after the call returns sees the committed rows: nothing waits in memory."""
    path = tmp_path / "m.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        ids = await store.insert_inbox([item(n) for n in range(5)])
        with sqlite3.connect(path) as raw:
            count = raw.execute("SELECT count(*) FROM webhook_inbox WHERE id >= ?", (ids[0],)).fetchone()
        raw.close()
        assert count == (5,)
    finally:
        await store.close()


async def test_a_failed_insert_is_a_store_error_and_stores_nothing(tmp_path: Path) -> None:
    """A database error rolls the whole batch back and surfaces as a StoreError that quotes no body or token."""
    path = tmp_path / "m.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        with sqlite3.connect(path) as raw:
            raw.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON webhook_inbox WHEN NEW.code = 'BAD' "
                "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
        raw.close()
        bad = InboxItem(T0, "BAD", "c1", "f" * 64, '{"code":"BAD"}', "tok-secret", False)
        with pytest.raises(StoreError, match="insert inbox") as caught:
            await store.insert_inbox([item(1), bad])
        assert "tok-secret" not in str(caught.value)
        assert await store.unprocessed_inbox(10) == []
        assert len(await store.insert_inbox([item(2)])) == 1  # the connection is usable again
    finally:
        await store.close()


async def test_a_batch_larger_than_one_statement_keeps_every_id_matched_to_its_item(tmp_path: Path) -> None:
    """Across several multi-row statements, each returned id is the row holding that item's body."""
    store = await open_store(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        await store.insert_inbox([item(0)])  # ids do not start at 1
        items = [item(n) for n in range(1, 2501)]
        ids = await store.insert_inbox(items)
        with sqlite3.connect(tmp_path / "m.db") as raw:
            bodies = dict(raw.execute("SELECT id, body FROM webhook_inbox").fetchall())
        raw.close()
        assert [bodies[i] for i in ids] == [it.body for it in items]
    finally:
        await store.close()

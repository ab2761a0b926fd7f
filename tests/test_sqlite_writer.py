"""The SQLite writes in a worker process: the same rows as the engine would write, durable, patient with other
writers, failing as a StoreError, and a worker that neither outlives the daemon nor takes a failure down with it."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.domain import Dimension, Source, Transition
from monitor.store import InboxItem, StoreError
from monitor.store.sql import open_store
from monitor.store.sqlite_writer import SqliteWriter, WorkerGone
from tests.states import connection_state

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
        written = list(zip(ids, items, strict=True))
        assert [(r.id, r.item) for r in rows] == [written[1], written[0], *written[2:]]  # the lifecycle lane first
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


# -- the worker process ------------------------------------------------------------------------------------------


def rows_of(n: int) -> list[InboxItem]:
    return [item(k) for k in range(n)]


async def migrated(path: Path) -> None:
    store = await open_store(f"sqlite:///{path}")
    await store.close()


def stored_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as raw:
        ids = [row[0] for row in raw.execute("SELECT id FROM webhook_inbox ORDER BY id")]
    raw.close()
    return ids


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def until_gone(pid: int, within: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not gone(pid):
        assert loop.time() < deadline, f"process {pid} still runs"
        await asyncio.sleep(0.02)


async def test_overlapping_calls_are_committed_in_the_order_they_were_made(tmp_path: Path) -> None:
    """Several calls in flight at once (the inbox's overlapping group commits): each gets its own ids, in order."""
    path = tmp_path / "m.db"
    await migrated(path)
    writer = SqliteWriter(str(path), busy_timeout_ms=5000)
    try:
        results = await asyncio.gather(*(writer.insert_inbox(rows_of(n + 1)) for n in range(8)))
        flat = [i for ids in results for i in ids]
        assert flat == sorted(flat)
        assert [len(ids) for ids in results] == list(range(1, 9))
        assert stored_ids(path) == flat
    finally:
        await writer.close()


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[Path, SqliteWriter, int]]:
    """A migrated file, and a writer whose worker has committed one row: (path, writer, worker pid)."""
    path = tmp_path / "m.db"
    await migrated(path)
    writer = SqliteWriter(str(path), busy_timeout_ms=30_000)
    try:
        await writer.insert_inbox(rows_of(1))
        assert writer.pid is not None
        yield path, writer, writer.pid
    finally:
        await writer.close()


async def park_behind_a_lock(path: Path, writer: SqliteWriter) -> tuple[sqlite3.Connection, asyncio.Task[list[int]]]:
    """Another connection holds SQLite's write lock; an insert of 2 rows waits for it in the worker's busy handler."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    parked = asyncio.create_task(writer.insert_inbox(rows_of(2)))
    await asyncio.sleep(0)
    return other, parked


async def test_a_killed_worker_fails_the_call_in_flight_and_the_next_call_starts_a_new_one(
    started: tuple[Path, SqliteWriter, int],
) -> None:
    """kill -9 of the worker mid-call: that call fails (the webhook gets a 503 and is retried), nothing half-written
    stays, and the next call is served by a new worker."""
    path, writer, pid = started
    first = stored_ids(path)
    other, parked = await park_behind_a_lock(path, writer)
    try:
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not parked.done()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(parked, 10)
        other.execute("ROLLBACK")
        after = await writer.insert_inbox(rows_of(2))
        assert writer.pid not in (None, pid)
        assert stored_ids(path) == first + after
    finally:
        other.close()


async def test_close_waits_for_the_calls_in_flight_then_the_worker_exits(
    started: tuple[Path, SqliteWriter, int],
) -> None:
    path, writer, pid = started
    other, parked = await park_behind_a_lock(path, writer)
    try:
        closing = asyncio.create_task(writer.close())
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not parked.done()
        assert not closing.done()
        other.execute("COMMIT")
        assert len(await asyncio.wait_for(parked, 10)) == 2
        await asyncio.wait_for(closing, 10)
        await until_gone(pid)
        assert len(stored_ids(path)) == 3
    finally:
        other.close()


async def test_the_worker_ignores_sigint_and_sigterm(started: tuple[Path, SqliteWriter, int]) -> None:
    """A Ctrl-C or a stop sent to the whole process group must not end the worker while the daemon drains."""
    _, writer, pid = started
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await writer.insert_inbox(rows_of(1))
    assert writer.pid == pid


_ORPHAN = """
import asyncio, sys
from monitor.store.sqlite_writer import SqliteWriter

async def main():
    writer = SqliteWriter(sys.argv[1], busy_timeout_ms=5000)
    await writer.insert_inbox([])
    print(writer.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_the_worker_exits_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """kill -9 of the daemon leaves no worker behind: it reads the end of its input and exits."""
    path = tmp_path / "m.db"
    await migrated(path)
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert daemon.stdout is not None
        line = await asyncio.wait_for(daemon.stdout.readline(), 30)
        pid = int(line)
        assert not gone(pid)
    finally:
        daemon.kill()
        await daemon.wait()
    await until_gone(pid)


def health(cid: str) -> Transition:
    return Transition(cid, Dimension.HEALTH, "healthy", "disabled", T0, Source.WEBHOOK)


async def test_a_large_save_goes_in_parts_and_is_still_one_transaction(tmp_path: Path) -> None:
    """12,000 states (three parts): all stored, with transitions that refer to states of a later part; when the
    last part fails, nothing of the save is, and an inbox insert made meanwhile is not caught in its rollback."""
    path = tmp_path / "m.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        many = [connection_state(f"c{n:05d}", T0) for n in range(12_000)]
        await store.save(many, [health(f"c{n:05d}") for n in range(11_990, 12_000)])
        assert len(await store.load_connections()) == 12_000
        assert len(await store.transitions("c11999")) == 1
        others = [connection_state(f"d{n:05d}", T0) for n in range(12_000)]
        failing = asyncio.create_task(store.save(others, [health("d00001"), health("never-saved")]))
        await asyncio.sleep(0)
        [inbox_id] = await store.insert_inbox([item(1)])
        with pytest.raises(StoreError):
            await failing
        assert len(await store.load_connections()) == 12_000
        assert [r.id for r in await store.unprocessed_inbox(10)] == [inbox_id]
    finally:
        await store.close()


async def test_a_worker_that_cannot_start_fails_the_calls_and_is_not_restarted_for_each_one(tmp_path: Path) -> None:
    """A path the worker cannot open: the call fails as the store failing (503 for a webhook), and the calls right
    after it fail at once rather than each starting a process of its own."""
    writer = SqliteWriter(str(tmp_path / "missing" / "m.db"), busy_timeout_ms=1000)
    try:
        with pytest.raises(sqlite3.Error):
            await writer.insert_inbox(rows_of(1))
        for _ in range(5):
            with pytest.raises(WorkerGone):
                await writer.insert_inbox(rows_of(1))
        assert writer.starts == 1
    finally:
        await writer.close()

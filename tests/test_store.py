"""The SQL store against a real SQLite file and a real PostgreSQL: one code path, the same behaviour."""

from __future__ import annotations

import asyncio
import sqlite3
import traceback
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from monitor.clock import FakeClock
from monitor.domain import (
    ConnectionState,
    Dimension,
    Health,
    LifecycleStage,
    PendingWebhook,
    Source,
    Transition,
)
from monitor.store import ConnectionQuery, InboxItem, StoreError
from monitor.store.sql import (
    SqlStore,
    lane_head,
    make_engine,
    normalize_url,
    open_store,
    pending_inbox,
    redact_url,
)
from monitor.store.tables import connections, webhook_inbox
from tests.states import connection_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(database_url, clock=FakeClock(T0 + timedelta(days=1)))
    yield opened
    await opened.close()


def state(cid: str, **changes: Any) -> ConnectionState:
    return connection_state(cid, T0, **changes)


def full_state() -> ConnectionState:
    """A state with every field set away from its default, and offsets other than UTC."""
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=PLUS2)
    return ConnectionState(
        id="8d1c6a8e-0000-4000-8000-000000000001",
        platform="NETSUITE",
        lifecycle_stage=LifecycleStage.HISTORICAL_SYNC,
        health=Health.DISABLED,
        stage_since=at,
        health_since=at + timedelta(seconds=1),
        first_seen_at=at - timedelta(days=3),
        updated_at=at + timedelta(seconds=2),
        access_token="access-sandbox-0f6b1e9c",
        created_at=at - timedelta(days=4),
        name="Acme",
        store_name="Acme Store",
        link_url="https://link.rutter.com/connections/abc",
        disabled_reason="FAILED TO AUTHENTICATE",
        is_disabled=True,
        needs_update=True,
        is_unhealthy=True,
        ready_at=at - timedelta(hours=5),
        historical_completed_at=at + timedelta(hours=1),
        passed_historical=True,
        last_progress_at=at - timedelta(minutes=7),
        num_batches_completed=2,
        synced_count=12_345_678_901,
        last_sync_completed_at=at - timedelta(minutes=8),
        last_data_at=at - timedelta(minutes=9),
        sync_period_seconds=3600,
        last_status_at=at - timedelta(minutes=10),
        last_webhook_at=at - timedelta(minutes=11),
        absent_inventories=1,
        deleted_at=at + timedelta(days=1),
        pending_webhooks=(PendingWebhook("CONNECTION_DISABLED", at), PendingWebhook("INITIAL_UPDATE", at)),
    )


def item(n: int, *, at: datetime = T0, cid: str | None = "c1", lifecycle: bool = True) -> InboxItem:
    return InboxItem(
        received_at=at,
        code="CONNECTION_DISABLED",
        connection_id=cid,
        body_hash=f"{n:064x}",
        body=f'{{"code": "CONNECTION_DISABLED", "n": {n}, "access_token": "***"}}',
        access_token=f"tok-{n}",
        is_lifecycle=lifecycle,
    )


def transition(cid: str, to: str, at: datetime, dimension: Dimension = Dimension.HEALTH) -> Transition:
    return Transition(cid, dimension, "healthy", to, at, Source.WEBHOOK, "SHOP_IS_LOCKED")


async def inbox_tokens(url: str) -> dict[int, str | None]:
    engine = make_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(webhook_inbox.c.id, webhook_inbox.c.access_token))
            return {int(row.id): row.access_token for row in rows}
    finally:
        await engine.dispose()


async def test_full_state_round_trips(store: SqlStore) -> None:
    """Every ConnectionState field survives a save and load, and timestamps come back as aware UTC."""
    original = full_state()
    for f in fields(ConnectionState):
        assert getattr(original, f.name) != f.default, f.name
    await store.save([original])
    loaded = await store.get_connection(original.id)
    assert loaded == original
    assert loaded is not None
    assert loaded.access_token == original.access_token
    for f in fields(ConnectionState):
        value = getattr(loaded, f.name)
        if isinstance(value, datetime):
            assert value.tzinfo is UTC, f.name
    assert all(p.seen_at.tzinfo is UTC for p in loaded.pending_webhooks)
    assert await store.load_connections(include_deleted=True) == [original]


def test_every_state_field_has_a_column() -> None:
    """The connections table stores each ConnectionState field under the same name, and nothing else."""
    assert {f.name for f in fields(ConnectionState)} == set(connections.c.keys())


async def test_save_upserts_and_the_last_duplicate_wins(store: SqlStore) -> None:
    """Saving a known id replaces its row; one save carrying the same id twice keeps the last."""
    await store.save([state("c1"), state("c2")])
    await store.save([state("c1", health=Health.UNHEALTHY, is_unhealthy=True), state("c1", platform="XERO")])
    assert await store.get_connection("c1") == state("c1", platform="XERO")
    assert [s.id for s in await store.load_connections()] == ["c1", "c2"]
    assert await store.get_connection("missing") is None


async def test_save_is_atomic(store: SqlStore, database_url: str) -> None:
    """A save that fails part-way leaves states, history and inbox exactly as they were."""
    [inbox_id] = await store.insert_inbox([item(1)])
    ghost = transition("never-saved", "disabled", T0)  # violates the transitions -> connections foreign key
    with pytest.raises(StoreError):
        await store.save([state("c1")], [transition("c1", "disabled", T0), ghost], [inbox_id])
    assert await store.get_connection("c1") is None
    assert await store.transitions("c1") == []
    assert [r.id for r in await store.unprocessed_inbox(10)] == [inbox_id]
    assert await inbox_tokens(database_url) == {inbox_id: "tok-1"}


async def test_naive_datetimes_are_refused(store: SqlStore) -> None:
    """A naive timestamp is a StoreError, not a silent guess about its zone."""
    with pytest.raises(StoreError, match="naive"):
        await store.save([state("c1", updated_at=datetime(2026, 1, 1))])
    assert await store.load_connections() == []


async def test_inbox_lifecycle(store: SqlStore, database_url: str) -> None:
    """Inbox rows come back in order until processed; processing clears their access token."""
    items = [item(n, at=T0 + timedelta(seconds=n)) for n in range(3)]
    ids = await store.insert_inbox(items)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert [(r.id, r.item) for r in await store.unprocessed_inbox(10)] == list(zip(ids, items, strict=True))
    assert [r.id for r in await store.unprocessed_inbox(2)] == ids[:2]

    await store.save([], processed_inbox_ids=[ids[0], ids[2]])
    assert [r.id for r in await store.unprocessed_inbox(10)] == [ids[1]]
    assert await inbox_tokens(database_url) == {ids[0]: None, ids[1]: "tok-1", ids[2]: None}


async def test_group_commit_counts_transactions(store: SqlStore) -> None:
    """Many inbox items inserted together cost one commit; an empty batch costs none."""
    ids = await store.insert_inbox([item(n) for n in range(50)])
    assert len(ids) == 50
    assert await store.insert_inbox([]) == []
    assert store.commits == 1
    await store.insert_inbox([item(99)])
    assert store.commits == 2


async def test_concurrent_writes_do_not_fail(store: SqlStore) -> None:
    """Inbox inserts and saves running at once all commit (no 'database is locked')."""
    inserted: list[list[int]] = []

    async def insert(n: int) -> None:
        inserted.append(await store.insert_inbox([item(n)]))

    await asyncio.gather(*(insert(n) for n in range(20)), *(store.save([state(f"c{n}")]) for n in range(20)))
    assert len({ids[0] for ids in inserted}) == 20
    assert store.commits == 20
    assert len(await store.load_connections()) == 20


async def test_dedupe_rows_since(store: SqlStore) -> None:
    """Dedupe rows are every inbox row received at or after the cut-off, processed or not, by id."""
    ids = await store.insert_inbox(
        [
            item(1, at=T0),
            item(2, at=T0 + timedelta(hours=1), cid=None, lifecycle=False),
            item(3, at=T0 + timedelta(hours=2)),
        ]
    )
    await store.save([], processed_inbox_ids=[ids[1]])
    rows = await store.dedupe_rows(T0 + timedelta(hours=1))
    assert [(r.id, r.connection_id, r.body_hash, r.is_lifecycle) for r in rows] == [
        (ids[1], None, f"{2:064x}", False),
        (ids[2], "c1", f"{3:064x}", True),
    ]
    assert rows[0].received_at == T0 + timedelta(hours=1)
    assert rows[0].received_at.tzinfo is UTC


async def test_inbox_backlog(store: SqlStore) -> None:
    """The backlog counts unprocessed rows and dates the oldest of them."""
    assert await store.inbox_backlog() == (0, None)
    ids = await store.insert_inbox([item(n, at=T0 + timedelta(minutes=n)) for n in range(3)])
    await store.save([], processed_inbox_ids=[ids[0]])
    assert await store.inbox_backlog() == (2, T0 + timedelta(minutes=1))


@pytest.mark.parametrize("oldest_lane", ["entity", "lifecycle"])
async def test_inbox_backlog_dates_the_oldest_of_either_lane(store: SqlStore, oldest_lane: str) -> None:
    """The oldest pending row is found whichever lane holds it, and a processed row no longer counts."""
    lanes = [oldest_lane == "lifecycle", oldest_lane != "lifecycle", oldest_lane == "lifecycle"]
    ids = await store.insert_inbox(
        [item(n, at=T0 + timedelta(minutes=n), lifecycle=lane) for n, lane in enumerate(lanes)]
    )
    assert await store.inbox_backlog() == (3, T0)
    await store.save([], processed_inbox_ids=[ids[0]])
    assert await store.inbox_backlog() == (2, T0 + timedelta(minutes=1))


async def test_pending_inbox_is_lifecycle_first_then_entity_each_in_arrival_order(store: SqlStore) -> None:
    """A disable queued behind a flood of entity webhooks is read first: the lifecycle lane, then the entity lane,
    each oldest first; a limit cuts the entity lane, never the lifecycle rows ahead of it."""
    lanes = [False, False, True, False, True, False]
    ids = await store.insert_inbox(
        [item(n, at=T0 + timedelta(seconds=n), lifecycle=lane) for n, lane in enumerate(lanes)]
    )
    lifecycle = [i for i, lane in zip(ids, lanes, strict=True) if lane]
    entity = [i for i, lane in zip(ids, lanes, strict=True) if not lane]
    assert [r.id for r in await store.unprocessed_inbox(10)] == lifecycle + entity
    assert [r.id for r in await store.unprocessed_inbox(3)] == [*lifecycle, entity[0]]
    assert [r.item.is_lifecycle for r in await store.unprocessed_inbox(10)] == [True, True, False, False, False, False]
    await store.save([], processed_inbox_ids=[lifecycle[0], entity[0]])
    assert [r.id for r in await store.unprocessed_inbox(10)] == [lifecycle[1], *entity[1:]]


async def test_pending_inbox_reads_one_index_range_on_sqlite(tmp_path: Path) -> None:
    """The processor's read and the backlog's lane heads use the partial index, without a sort over the pending
    rows: under a backlog of 100,000 rows a sort per batch would cost more than the batch."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'plan.db'}"
    await (await open_store(url)).close()  # the schema as the migrations build it
    dialect = sqlite_dialect.dialect()
    with sqlite3.connect(tmp_path / "plan.db") as db:
        for stmt in (pending_inbox(10), lane_head(True), lane_head(False)):
            sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            plan = " | ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "ix_webhook_inbox_pending" in plan, plan
            assert "TEMP B-TREE" not in plan, plan


async def test_list_filters_and_pages(store: SqlStore) -> None:
    """Filters combine, pages follow the id cursor to a None cursor, and deleted rows need include_deleted."""
    fleet = [
        state("a", platform="SHOPIFY", lifecycle_stage=LifecycleStage.INITIAL_SYNC),
        state("B", platform="SHOPIFY"),
        state("c", platform="XERO", health=Health.DISABLED, is_disabled=True),
        state("Z", platform="SHOPIFY"),
        state("e", platform="SHOPIFY", deleted_at=T0),
        state("é", platform="SHOPIFY"),
    ]
    await store.save(fleet)

    async def walk(query: ConnectionQuery) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            page = await store.list_connections(replace(query, cursor=cursor))
            pages.append([s.id for s in page.items])
            if page.next_cursor is None:
                return pages
            assert page.next_cursor == page.items[-1].id
            cursor = page.next_cursor

    assert await walk(ConnectionQuery(limit=2)) == [["B", "Z"], ["a", "c"], ["é"]]  # code-point order
    assert await walk(ConnectionQuery(limit=5)) == [["B", "Z", "a", "c", "é"]]
    assert await walk(ConnectionQuery(limit=2, include_deleted=True)) == [["B", "Z"], ["a", "c"], ["e", "é"]]
    shopify_healthy = ConnectionQuery(platform="SHOPIFY", health=Health.HEALTHY, limit=10)
    assert await walk(shopify_healthy) == [["B", "Z", "a", "é"]]
    assert await walk(ConnectionQuery(lifecycle_stage=LifecycleStage.INITIAL_SYNC)) == [["a"]]
    assert await walk(ConnectionQuery(health=Health.DISABLED, platform="XERO")) == [["c"]]
    assert await walk(ConnectionQuery(ids=frozenset({"a", "c", "e", "é", "nope"}), limit=1)) == [
        ["a"],
        ["c"],
        ["é"],
    ]
    assert await walk(ConnectionQuery(ids=frozenset())) == [[]]
    page = await store.list_connections(ConnectionQuery(limit=1))
    assert page.items == [fleet[1]]


async def test_list_by_many_ids(store: SqlStore) -> None:
    """An ids filter larger than one statement's parameters still pages in id order."""
    await store.save([state(f"c{n:05d}") for n in range(2_500)])
    wanted = frozenset(f"c{n:05d}" for n in range(0, 2_500, 2))
    first = await store.list_connections(ConnectionQuery(ids=wanted, limit=1_100))
    second = await store.list_connections(ConnectionQuery(ids=wanted, limit=1_100, cursor=first.next_cursor))
    assert [s.id for s in first.items + second.items] == sorted(wanted)
    assert second.next_cursor is None


async def test_bulk_save_round_trips(store: SqlStore) -> None:
    """A save larger than one upsert batch stores every state as given."""
    fleet = [
        state(f"c{n:06d}", created_at=T0 - timedelta(seconds=n), synced_count=n, access_token=f"t{n}")
        for n in range(12_000)
    ]
    await store.save(fleet)
    assert await store.load_connections() == fleet


async def test_transitions_oldest_first(store: SqlStore) -> None:
    """History comes back oldest first, and a limit keeps the most recent entries."""
    await store.save([state("c1"), state("c2")], [transition("c1", "unhealthy", T0)])
    later = [
        transition("c1", "disabled", T0 + timedelta(minutes=1)),
        transition("c2", "disabled", T0 + timedelta(minutes=1)),
        transition("c1", "ongoing", T0 + timedelta(minutes=2), Dimension.LIFECYCLE_STAGE),
    ]
    await store.save([], later)
    history = await store.transitions("c1")
    assert history == [transition("c1", "unhealthy", T0), later[0], later[2]]
    assert history[0].at.tzinfo is UTC
    assert await store.transitions("c1", limit=2) == [later[0], later[2]]
    assert await store.transitions("nobody") == []


async def test_inventories(store: SqlStore) -> None:
    """The last inventory is the latest recorded one."""
    assert await store.last_inventory() is None
    await store.record_inventory(T0 + timedelta(minutes=5), 10)
    await store.record_inventory(T0, 9)
    assert await store.last_inventory() == T0 + timedelta(minutes=5)


async def test_prune(store: SqlStore) -> None:
    """Prune drops old processed inbox rows and old history, keeps the rest and the latest inventory."""
    cut = T0 + timedelta(days=1)
    ids = await store.insert_inbox([item(1, at=T0), item(2, at=T0), item(3, at=cut)])
    await store.save(
        [state("c1")],
        [transition("c1", "unhealthy", T0), transition("c1", "healthy", cut)],
        processed_inbox_ids=[ids[0], ids[2]],
    )
    await store.record_inventory(T0, 5)
    await store.record_inventory(T0 + timedelta(hours=1), 6)

    assert await store.prune(inbox_before=cut, history_before=cut) == (1, 1)
    assert [r.id for r in await store.unprocessed_inbox(10)] == [ids[1]]
    assert [r.id for r in await store.dedupe_rows(T0)] == [ids[1], ids[2]]
    assert [t.to for t in await store.transitions("c1")] == ["healthy"]
    assert await store.last_inventory() == T0 + timedelta(hours=1)
    assert await store.prune(inbox_before=cut, history_before=cut) == (0, 0)


async def test_ids_keep_growing_after_a_prune_empties_the_inbox(store: SqlStore) -> None:
    """Inbox ids never go back, so readers paging by 'id > last' miss nothing after a prune."""
    [first] = await store.insert_inbox([item(1)])
    await store.save([], processed_inbox_ids=[first])
    assert await store.prune(inbox_before=T0 + timedelta(days=1), history_before=T0) == (1, 0)
    [second] = await store.insert_inbox([item(2)])
    assert second > first


async def test_unreachable_database_hides_the_password() -> None:
    """A database that cannot be reached is a StoreError that never shows the password."""
    url = "postgresql://monitor:hunter2-secret@127.0.0.1:9/rutter"
    with pytest.raises(StoreError) as caught:
        await open_store(url)
    assert "hunter2-secret" not in str(caught.value)
    assert "hunter2-secret" not in "".join(traceback.format_exception(caught.value))
    assert "monitor:***@127.0.0.1:9" in str(caught.value)


@pytest.mark.postgres
async def test_lost_database_is_a_store_error(postgres_cluster: Any, postgres_database_url: str) -> None:
    """A PostgreSQL database that goes away under an open store turns reads and writes into StoreError."""
    store = await open_store(postgres_database_url)
    try:
        await store.ping()
        postgres_cluster.psql(f"DROP DATABASE {sa.make_url(postgres_database_url).database} WITH (FORCE)")
        with pytest.raises(StoreError, match="ping failed"):
            await store.ping()
        with pytest.raises(StoreError, match="insert inbox failed"):
            await store.insert_inbox([item(1)])
        assert store.commits == 0
    finally:
        await store.close()


async def test_unusable_sqlite_path_is_a_store_error(tmp_path: Path) -> None:
    """A SQLite file in a directory that does not exist is a StoreError naming that directory."""
    with pytest.raises(StoreError, match=r"directory .*missing of the SQLite file does not exist"):
        await open_store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


async def test_unsupported_backend_is_a_store_error() -> None:
    """Only SQLite and PostgreSQL are accepted, and the refusal hides the password."""
    with pytest.raises(StoreError, match="unsupported database") as caught:
        await open_store("mysql://root:pw-secret@db/x")
    assert "pw-secret" not in str(caught.value)


async def test_sqlite_file_keeps_everything_across_reopen(tmp_path: Path) -> None:
    """Reopening a SQLite file and migrating it again finds every state, history and inbox row, inventory."""
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    first = await open_store(url)
    await first.save([full_state(), state("c1")], [transition("c1", "unhealthy", T0)])
    ids = await first.insert_inbox([item(1), item(2)])
    await first.save([], processed_inbox_ids=[ids[0]])
    await first.record_inventory(T0, 2)
    await first.close()

    second = await open_store(url)
    try:
        assert await second.load_connections(include_deleted=True) == [full_state(), state("c1")]
        assert await second.transitions("c1") == [transition("c1", "unhealthy", T0)]
        assert [r.id for r in await second.unprocessed_inbox(10)] == [ids[1]]
        assert await second.last_inventory() == T0
        await second.ping()
    finally:
        await second.close()
    with sqlite3.connect(tmp_path / "monitor.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db?ssl=require", "postgresql+asyncpg://u@h/db?ssl=require"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    """Plain URLs are pointed at the async drivers; async ones pass unchanged."""
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql+asyncpg://u@h/db?password=s3cret", "postgresql+asyncpg://u@h/db?password=redacted"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """Redaction hides passwords in the authority and in the query string."""
    assert redact_url(url) == expected

"""SqlStore: the Store port on SQLAlchemy 2 Core (async). One code path serves SQLite (aiosqlite, WAL) and
PostgreSQL (asyncpg); the upsert statement and the migration lock are the only dialect switches."""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from monitor.clock import Clock, SystemClock
from monitor.domain import ConnectionState, Transition
from monitor.store import (
    ConnectionQuery,
    DedupeRow,
    InboxItem,
    InboxRecord,
    Page,
    StoreError,
)
from monitor.store.alerts import AlertingQueries
from monitor.store.gate import WriteGate
from monitor.store.sqlite_writer import SqliteWriter
from monitor.store.tables import (
    STATE_COLUMNS,
    BulkUpsert,
    connections,
    inbox_item_from_row,
    inbox_row,
    inventories,
    shared_state_columns,
    sqlite_text,
    state_from_row,
    transition_from_row,
    transition_row,
    webhook_inbox,
)
from monitor.store.tables import transitions as transitions_table

if TYPE_CHECKING:
    from alembic.config import Config

log = structlog.get_logger()
_T = TypeVar("_T")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///rutter-monitor.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration's revision (tests/test_migrations.py holds it equal to Alembic's head). A store already at it
# opens without importing Alembic, which costs ~11 MB of RSS for the daemon's lifetime (bench/README.md, session 6).
SCHEMA_HEAD = "0004"

_SQLITE_BUSY_TIMEOUT_MS = 15_000
_PG_CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK_KEY = 0x52_75_74_74_65_72  # "Rutter": one migrator at a time when replicas start together
_IDS_PER_STATEMENT = 1_000  # well under SQLite's and asyncpg's bound-parameter limits
_UPSERT_BATCH = 10_000
_LOAD_PARTITION = 2_000  # rows fetched at a time by load_connections
_DB_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    OSError,  # refused or timed-out connects surface as OSError (TimeoutError included)
    sqlite3.Error,
)


def normalize_url(url: str) -> str:
    """Point a plain SQLite or PostgreSQL URL at the async driver this store uses; refuse other backends."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {redact_url(url)}") from None
    backend = parsed.get_backend_name()
    drivers = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r} (use sqlite or postgresql): {redact_url(url)}")
    # Only the scheme changes; the rest is kept verbatim (re-rendering would re-quote paths and passwords).
    return f"{drivers[backend]}://{url.partition('://')[2]}"


def redact_url(url: str) -> str:
    """The URL with its password hidden, safe for logs and error messages."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    secret_keys = [key for key in parsed.query if key.lower() in {"password", "sslpassword"}]
    if parsed.password is None and not secret_keys:
        return url
    parsed = parsed.update_query_dict(dict.fromkeys(secret_keys, "redacted"))
    return parsed.render_as_string(hide_password=True)


def alembic_config(*, url: str | None = None, connection: sa.Connection | None = None) -> Config:
    """An Alembic config for the packaged migrations, bound to a URL or to an open connection."""
    from alembic.config import Config  # imported only to migrate: see SCHEMA_HEAD

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def open_store(url: str, *, migrate: bool = True, clock: Clock | None = None) -> SqlStore:
    """Connect to `url` (plain sqlite:/postgresql: URLs are accepted) and bring the schema to head."""
    try:
        async_url = normalize_url(url)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if (missing := _missing_sqlite_directory(async_url)) is not None:
        # Said plainly here, rather than as the driver's "unable to open database file".
        raise StoreError(f"store open failed: the directory {missing} of the SQLite file does not exist")
    store = SqlStore(make_engine(async_url), url=async_url, clock=clock or SystemClock())
    try:
        upgraded = await store.migrate() if migrate else False
    except BaseException:
        await store.close()
        raise
    log.info("store opened", url=redact_url(async_url), migrated=upgraded)
    return store


def _sqlite_file(url: str) -> str | None:
    """The path of a plain SQLite file URL; None for other backends, memory databases and URI filenames (SQLite
    URI filenames are the driver's to interpret, and they keep the engine's connection for every statement)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or "uri" in parsed.query:
        return None
    return database


def _missing_sqlite_directory(url: str) -> Path | None:
    database = _sqlite_file(url)
    parent = Path(database).parent if database is not None else None
    return None if parent is None or parent.is_dir() else parent


def make_engine(url: str) -> AsyncEngine:
    """An async engine for a normalized URL, with the SQLite pragmas set on every connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(
            parsed,
            hide_parameters=True,  # error messages then never echo access tokens or bodies
            pool_pre_ping=True,
            connect_args={"timeout": _PG_CONNECT_TIMEOUT_S},
        )
    engine = create_async_engine(parsed, hide_parameters=True)
    sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL with synchronous=FULL: an acknowledged webhook survives power loss; group commit pays the fsync."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _upgrade_head(connection: sa.Connection) -> None:
    from alembic import command  # imported only to migrate: see SCHEMA_HEAD

    command.upgrade(alembic_config(connection=connection), "head")


def _schema_versions(connection: sa.Connection) -> set[str]:
    """The revisions the database is stamped with; none for a database Alembic never touched."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return set()
    return {str(v) for v in connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()}


@functools.lru_cache(maxsize=8)
def pending_inbox(limit: int) -> sa.Select[Any]:
    """Unprocessed inbox rows, lifecycle rows first, each lane in arrival order: one range of the partial index
    ix_webhook_inbox_pending (is_lifecycle DESC, id) WHERE processed_at IS NULL, read without a sort.

    Built once per limit (statements are immutable): building it took ~18% of the processor's time per batch of
    10 entity webhooks, more than running it."""
    c = webhook_inbox.c
    return sa.select(webhook_inbox).where(c.processed_at.is_(None)).order_by(c.is_lifecycle.desc(), c.id).limit(limit)


def lane_head(lifecycle: bool) -> sa.Select[Any]:
    """When the oldest unprocessed row of one lane arrived: a seek in ix_webhook_inbox_pending (over both lanes at
    once, ORDER BY id would sort every pending row)."""
    c = webhook_inbox.c
    lane = c.is_lifecycle == (sa.true() if lifecycle else sa.false())
    return sa.select(c.received_at).where(c.processed_at.is_(None), lane).order_by(c.id).limit(1)


class SqlStore(AlertingQueries):
    """The durable store (its alerting queries live in monitor.store.alerts). On SQLite, writes pass a WriteGate
    (monitor.store.gate): the worker's calls overlap, an engine transaction runs alone, and each waits on the gate
    rather than spin in SQLite's busy handler, which sleeps in steps of up to 100 ms."""

    def __init__(self, engine: AsyncEngine, *, url: str, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._dialect = engine.dialect.name
        self._password = make_url(url).password or ""
        self._url = url
        self._gate = WriteGate() if self._dialect == "sqlite" else None
        self._commits = 0
        self._upsert = BulkUpsert(engine.dialect)
        file = _sqlite_file(url)
        # SQLite files: the hot writes (inbox, state saves) in a worker process (see monitor.store.sqlite_writer)
        self._writer = SqliteWriter(file, busy_timeout_ms=_SQLITE_BUSY_TIMEOUT_MS) if file is not None else None

    @property
    def commits(self) -> int:
        """How many inbox transactions were committed: fewer than inserted webhooks proves group commit."""
        return self._commits

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._dialect

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for leadership (a dedicated connection holds the lock)."""
        return self._engine

    async def migrate(self) -> bool:
        """Run `alembic upgrade head` on this store's engine, one replica at a time on PostgreSQL; a store already at
        head is left alone without loading Alembic. Whether Alembic ran."""
        async with self._guard("migrate"), self._engine.connect() as conn:
            if await conn.run_sync(_schema_versions) == {SCHEMA_HEAD}:
                return False
        from alembic.util import CommandError  # imported only to migrate: see SCHEMA_HEAD

        try:
            async with self._guard("migrate"), self._engine.begin() as conn:
                if self._dialect == "postgresql":
                    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
                await conn.run_sync(_upgrade_head)
        except CommandError as exc:  # e.g. a database stamped by a newer release, at a revision this one lacks
            raise StoreError(self._describe("migrate", exc)) from exc
        return True

    async def ping(self) -> None:
        async with self._read("ping") as conn:
            await conn.execute(sa.select(1))

    async def insert_inbox(self, items: Sequence[InboxItem]) -> list[int]:
        if not items:
            return []
        if self._writer is not None:
            assert self._gate is not None
            async with self._guard("insert inbox"), self._gate.shared():
                ids = await self._writer.insert_inbox(items)
            self._commits += 1
            return ids
        rows = [inbox_row(item) for item in items]
        c = webhook_inbox.c
        keys = [(item.body_hash, item.connection_id) for item in items]
        if len(set(keys)) < len(keys):
            # Only an ordered RETURNING can tell identical items apart (one statement per row on SQLite).
            stmt = sa.insert(webhook_inbox).returning(c.id, sort_by_parameter_order=True)
            async with self._write("insert inbox") as conn:
                ids = [int(row.id) for row in await conn.execute(stmt, rows)]
        else:
            # One multi-row INSERT, ids matched back by each item's key (unique here). An ordered RETURNING would
            # make SQLAlchemy send one INSERT per row on SQLite, each a round trip to the driver's thread, which
            # waits for a busy event loop: that capped webhook ingest at about 800 req/s (bench/ingest.py).
            stmt = sa.insert(webhook_inbox).returning(c.id, c.body_hash, c.connection_id)
            async with self._write("insert inbox") as conn:
                by_key = {(row.body_hash, row.connection_id): int(row.id) for row in await conn.execute(stmt, rows)}
            ids = [by_key[key] for key in keys]
        self._commits += 1
        return ids

    async def unprocessed_inbox(self, limit: int) -> list[InboxRecord]:
        stmt = pending_inbox(limit)
        async with self._read("read inbox") as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [InboxRecord(id=int(row["id"]), item=inbox_item_from_row(row)) for row in rows]

    async def dedupe_rows(self, since: datetime) -> list[DedupeRow]:
        c = webhook_inbox.c
        stmt = (
            sa.select(c.id, c.connection_id, c.body_hash, c.is_lifecycle, c.received_at)
            .where(c.received_at >= since)
            .order_by(c.id)
        )
        async with self._read("read dedupe rows") as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            DedupeRow(
                id=int(row.id),
                connection_id=row.connection_id,
                body_hash=row.body_hash,
                is_lifecycle=bool(row.is_lifecycle),
                received_at=row.received_at,
            )
            for row in rows
        ]

    async def inbox_backlog(self) -> tuple[int, datetime | None]:
        c = webhook_inbox.c
        pending = c.processed_at.is_(None)
        async with self._read("read inbox backlog") as conn:
            count = (await conn.execute(sa.select(sa.func.count()).where(pending))).scalar_one()
            heads = [(await conn.execute(lane_head(lane))).scalar_one_or_none() for lane in (True, False)]
        return int(count), min((at for at in heads if at is not None), default=None)

    async def load_connections(self, include_deleted: bool = False) -> list[ConnectionState]:
        # Streamed, each partition of rows made into states at once: fetching every row first held the driver's
        # tuples, SQLAlchemy's rows and the states together, and the allocator kept that peak (100 MB more RSS at
        # 100,000 connections, bench/scale.py). Repeated values are shared (see tables.shared_state_columns); no
        # compiled cache, so each load has its own memo.
        stmt = sa.select(*shared_state_columns()).order_by(connections.c.id)
        if not include_deleted:
            stmt = stmt.where(connections.c.deleted_at.is_(None))
        states: list[ConnectionState] = []
        async with self._read("load connections") as conn:
            await conn.execution_options(compiled_cache=None)
            result = await conn.stream(stmt)
            async for rows in result.partitions(_LOAD_PARTITION):
                states.extend(map(state_from_row, rows))
        return states

    async def get_connection(self, connection_id: str) -> ConnectionState | None:
        stmt = sa.select(*STATE_COLUMNS).where(connections.c.id == connection_id)
        async with self._read("get connection") as conn:
            row = (await conn.execute(stmt)).one_or_none()
        return None if row is None else state_from_row(row)

    async def save(
        self,
        states: Sequence[ConnectionState],
        transitions: Sequence[Transition] = (),
        processed_inbox_ids: Sequence[int] = (),
    ) -> None:
        if not (states or transitions or processed_inbox_ids):
            return
        # The last state of an id wins; rows go in id order so that concurrent saves lock rows in one order.
        latest = {state.id: state for state in states}
        try:
            rows = self._upsert.rows(latest[key] for key in sorted(latest))
        except (ValueError, TypeError) as exc:  # e.g. a naive datetime, refused before any SQL runs
            raise StoreError(f"store save refused a state: {exc}") from exc
        now = self._clock.now()
        if self._writer is not None:
            assert self._gate is not None
            history_rows: list[tuple[object, ...]] = [
                (t.connection_id, t.dimension.value, t.from_, t.to, sqlite_text(t.at), t.source.value, t.reason)
                for t in transitions
            ]
            async with self._guard("save"), self._gate.shared():
                await self._writer.save(self._upsert.sql, rows, history_rows, processed_inbox_ids, sqlite_text(now))
            return
        history = [transition_row(t) for t in transitions]
        c = webhook_inbox.c
        async with self._write("save") as conn:
            for batch in _chunks(rows, _UPSERT_BATCH):
                await conn.exec_driver_sql(self._upsert.sql, list(batch))
            if history:
                await conn.execute(sa.insert(transitions_table), history)
            for ids in _chunks(list(processed_inbox_ids), _IDS_PER_STATEMENT):
                await conn.execute(
                    sa.update(webhook_inbox)
                    .where(c.id.in_(ids), c.processed_at.is_(None))
                    .values(processed_at=now, access_token=None)
                )

    async def list_connections(self, query: ConnectionQuery) -> Page:
        limit = max(1, query.limit)
        c = connections.c
        stmt = sa.select(*STATE_COLUMNS).order_by(c.id)
        if not query.include_deleted:
            stmt = stmt.where(c.deleted_at.is_(None))
        if query.lifecycle_stage is not None:
            stmt = stmt.where(c.lifecycle_stage == query.lifecycle_stage.value)
        if query.health is not None:
            stmt = stmt.where(c.health == query.health.value)
        if query.platform is not None:
            stmt = stmt.where(c.platform == query.platform)
        rows: list[sa.Row[Any]] = []
        async with self._read("list connections") as conn:
            if query.ids is None:
                if query.cursor is not None:
                    stmt = stmt.where(c.id > query.cursor)
                rows = list((await conn.execute(stmt.limit(limit + 1))).all())
            else:
                # Ids sort by code point in Python and in both databases: candidates are walked in page order.
                wanted = sorted(i for i in query.ids if query.cursor is None or i > query.cursor)
                for ids in _chunks(wanted, _IDS_PER_STATEMENT):
                    page = stmt.where(c.id.in_(ids)).limit(limit + 1 - len(rows))
                    rows.extend((await conn.execute(page)).all())
                    if len(rows) > limit:
                        break
        items = [state_from_row(row) for row in rows[:limit]]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    async def transitions(self, connection_id: str, limit: int = 1000) -> list[Transition]:
        """A connection's most recent `limit` transitions, oldest first."""
        t = transitions_table.c
        stmt = sa.select(transitions_table).where(t.connection_id == connection_id)
        stmt = stmt.order_by(t.id.desc()).limit(limit)
        async with self._read("read transitions") as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [transition_from_row(row) for row in reversed(rows)]

    async def record_inventory(self, at: datetime, listed: int) -> None:
        async with self._write("record inventory") as conn:
            await conn.execute(sa.insert(inventories).values(at=at, listed=listed))

    async def last_inventory(self) -> datetime | None:
        async with self._read("read last inventory") as conn:
            at: datetime | None = (await conn.execute(sa.select(sa.func.max(inventories.c.at)))).scalar()
        return at

    async def prune(self, inbox_before: datetime, history_before: datetime) -> tuple[int, int]:
        """Delete processed inbox rows received before `inbox_before` and transitions before `history_before`.
        Inventories older than `history_before` go too, except the latest, which readiness needs, and so do
        resolved incidents and storms and settled notifications."""
        i, t, v = webhook_inbox.c, transitions_table.c, inventories.c
        latest_inventory = sa.select(sa.func.max(v.id)).scalar_subquery()
        async with self._write("prune") as conn:
            inbox = await conn.execute(
                sa.delete(webhook_inbox).where(i.processed_at.is_not(None), i.received_at < inbox_before)
            )
            history = await conn.execute(sa.delete(transitions_table).where(t.at < history_before))
            await conn.execute(sa.delete(inventories).where(v.at < history_before, v.id < latest_inventory))
            await self._prune_alerting(conn, history_before)
        return int(inbox.rowcount), int(history.rowcount)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        await self._engine.dispose()

    # -- plumbing --------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _guard(self, operation: str) -> AsyncIterator[None]:
        """Turn any database failure into StoreError, with a message free of credentials and parameters."""
        try:
            yield
        except StoreError:
            raise
        except _DB_ERRORS as exc:
            raise StoreError(self._describe(operation, exc)) from exc

    @contextlib.asynccontextmanager
    async def _read(self, operation: str) -> AsyncIterator[AsyncConnection]:
        async with self._guard(operation), self._engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self, operation: str) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed on exit and rolled back on any error."""
        gate = self._gate.exclusive() if self._gate is not None else contextlib.nullcontext()
        async with self._guard(operation), gate, self._engine.begin() as conn:
            yield conn

    def _describe(self, operation: str, exc: BaseException) -> str:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        detail = lines[0][:300] if lines else ""
        detail = detail.replace(self._url, redact_url(self._url))
        if self._password:
            detail = detail.replace(self._password, "***")
        kind = type(cause.__cause__ or cause).__name__  # the driver's own class, under SQLAlchemy's adapter
        message = f"store {operation} failed on {redact_url(self._url)}: {kind}"
        return f"{message}: {detail}" if detail else message


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

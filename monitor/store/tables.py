"""The schema, as SQLAlchemy Core tables (what Alembic compares against and monitor.store.sql queries), and
the mapping between its rows and the domain values. One definition serves SQLite and PostgreSQL; the few
differences are type variants and the dialect's INSERT ... ON CONFLICT."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from monitor.domain import (
    ConnectionState,
    Dimension,
    Health,
    LifecycleStage,
    PendingWebhook,
    Source,
    Transition,
)
from monitor.store import InboxItem

# Constraint and index names that Alembic can diff and that read the same on both backends.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out. SQLite keeps no offset, so values are stored as naive UTC text (the
    layout SQLAlchemy itself writes) and made aware on read; PostgreSQL keeps `timestamptz`. A naive datetime
    is refused: its meaning is a guess.

    The processors replace the impl's instead of wrapping them (process_bind_param): a save of 100,000
    connections binds about a million timestamps, and one call per value instead of three matters there."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any]:
        if dialect.name == "sqlite":
            return _bind_sqlite
        return _bind_aware

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None]:
        if dialect.name == "sqlite":
            return _result_sqlite
        return _result_aware


def _utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime refused by the store; pass an aware UTC datetime")
    return value.astimezone(UTC)


def _bind_sqlite(value: datetime | None) -> str | None:
    return None if value is None else sqlite_text(value)


def sqlite_text(value: datetime) -> str:
    """ "2026-01-01 12:00:00.000000": the layout SQLAlchemy's SQLite DATETIME uses, sortable as text."""
    return _utc(value).isoformat(" ", "microseconds")[:26]


def _bind_aware(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _result_sqlite(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime.fromisoformat(f"{value}+00:00")


def _result_aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
    return _utc(value) if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Ids sort by code point on both backends (SQLite's BINARY, PostgreSQL's "C"), so keyset pages and Python's
# sorted() agree whatever the server's locale.
ConnectionId = sa.String().with_variant(sa.String(collation="C"), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit sequence. Tables using it also
# set sqlite_autoincrement: ids never go back after a prune emptied a table (readers page by "id > last").
AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

connections = sa.Table(
    "connections",
    metadata,
    sa.Column("id", ConnectionId, primary_key=True),
    sa.Column("platform", sa.String(), nullable=False),
    sa.Column("lifecycle_stage", sa.String(32), nullable=False),
    sa.Column("health", sa.String(32), nullable=False),
    sa.Column("stage_since", UTCDateTime(), nullable=False),
    sa.Column("health_since", UTCDateTime(), nullable=False),
    sa.Column("first_seen_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("access_token", sa.String(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=True),
    sa.Column("name", sa.String(), nullable=True),
    sa.Column("store_name", sa.String(), nullable=True),
    sa.Column("link_url", sa.Text(), nullable=True),
    sa.Column("disabled_reason", sa.String(), nullable=True),
    sa.Column("is_disabled", sa.Boolean(), nullable=False),
    sa.Column("needs_update", sa.Boolean(), nullable=False),
    sa.Column("is_unhealthy", sa.Boolean(), nullable=False),
    sa.Column("ready_at", UTCDateTime(), nullable=True),
    sa.Column("historical_completed_at", UTCDateTime(), nullable=True),
    sa.Column("passed_historical", sa.Boolean(), nullable=False),
    sa.Column("last_progress_at", UTCDateTime(), nullable=True),
    sa.Column("num_batches_completed", sa.Integer(), nullable=True),
    sa.Column("synced_count", sa.BigInteger(), nullable=True),
    sa.Column("last_sync_completed_at", UTCDateTime(), nullable=True),
    sa.Column("last_data_at", UTCDateTime(), nullable=True),
    sa.Column("sync_period_seconds", sa.Integer(), nullable=True),
    sa.Column("last_status_at", UTCDateTime(), nullable=True),
    sa.Column("last_webhook_at", UTCDateTime(), nullable=True),
    sa.Column("absent_inventories", sa.Integer(), nullable=False),
    sa.Column("deleted_at", UTCDateTime(), nullable=True),
    sa.Column("pending_webhooks", sa.JSON(), nullable=False),
    sa.Index(None, "lifecycle_stage"),
    sa.Index(None, "health"),
    sa.Index(None, "platform"),
)

transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("id", AutoId, primary_key=True, autoincrement=True),
    sa.Column("connection_id", ConnectionId, sa.ForeignKey("connections.id"), nullable=False),
    sa.Column("dimension", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(64), nullable=False),
    sa.Column("to_state", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(), nullable=False),
    sa.Index(None, "connection_id", "id"),
    sa.Index(None, "at"),
    sqlite_autoincrement=True,
)

webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    sa.Column("id", AutoId, primary_key=True, autoincrement=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("code", sa.String(), nullable=False),
    sa.Column("connection_id", sa.String(), nullable=True),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("access_token", sa.String(), nullable=True),
    sa.Column("is_lifecycle", sa.Boolean(), nullable=False),
    sa.Column("processed_at", UTCDateTime(), nullable=True),
    sa.Index(None, "received_at"),
    sqlite_autoincrement=True,
)

sa.Index(
    "ix_webhook_inbox_pending",
    webhook_inbox.c.is_lifecycle.desc(),
    webhook_inbox.c.id,
    sqlite_where=webhook_inbox.c.processed_at.is_(None),
    postgresql_where=webhook_inbox.c.processed_at.is_(None),
)

inventories = sa.Table(
    "inventories",
    metadata,
    sa.Column("id", AutoId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("listed", sa.Integer(), nullable=False),
    sa.Index(None, "at"),
    sqlite_autoincrement=True,
)

# The incident engine (monitor.alerting): incidents, storm roll-ups and the durable outbox of notifications.
KEY = sa.String(64)

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("key", KEY, primary_key=True),
    sa.Column("connection_id", ConnectionId, nullable=False),
    sa.Column("platform", sa.String(), nullable=False),
    sa.Column("alert", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("since", UTCDateTime(), nullable=False),
    sa.Column("detected_at", UTCDateTime(), nullable=False),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("health", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(), nullable=False),
    sa.Column("store_name", sa.String(), nullable=True),
    sa.Column("name", sa.String(), nullable=True),
    sa.Column("link_url", sa.Text(), nullable=True),
    sa.Column("cleared_at", UTCDateTime(), nullable=True),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.Column("storm_key", KEY, nullable=True),
    sa.Column("announced", sa.Boolean(), nullable=False),
    sa.Column("announced_reason", sa.String(), nullable=False),
    sa.Column("attempted", sa.Boolean(), nullable=False),
    sa.Index(None, "phase"),
    sa.Index(None, "connection_id", "alert"),
    sa.Index(None, "resolved_at"),
)

storms = sa.Table(
    "storms",
    metadata,
    sa.Column("key", KEY, primary_key=True),
    sa.Column("platform", sa.String(), nullable=False),
    sa.Column("alert", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("since", UTCDateTime(), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.Column("open_count", sa.Integer(), nullable=False),
    sa.Column("level", sa.Integer(), nullable=False),
    sa.Column("examples", sa.JSON(), nullable=False),
    sa.Column("reasons", sa.JSON(), nullable=False),
    sa.Column("last_cleared_at", UTCDateTime(), nullable=True),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.Index(None, "resolved_at"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", AutoId, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(), nullable=False),
    sa.Column("group_key", KEY, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("parent", sa.Boolean(), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("detected_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("first_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("settled_at", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.String(), nullable=False),
    sa.Column("ts", sa.String(32), nullable=True),
    sa.Column("slack_channel", sa.String(), nullable=True),
    # The delivery scan is "the oldest pending row of each channel": one range of this index per channel.
    sa.Index(None, "state", "channel", "id"),
    sa.Index(None, "group_key", "id"),
    sa.Index(None, "created_at"),
    sqlite_autoincrement=True,
)


# ----------------------------------------------------------------------------------------------------
# Rows <-> domain values.

_STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ConnectionState))
_state_values = operator.attrgetter(*_STATE_FIELDS)
# Selected in field order, so a row becomes ConnectionState(*row) with three conversions.
STATE_COLUMNS = tuple(connections.c[name] for name in _STATE_FIELDS)
_STAGE = _STATE_FIELDS.index("lifecycle_stage")
_HEALTH = _STATE_FIELDS.index("health")
_PENDING = _STATE_FIELDS.index("pending_webhooks")


def upsert_statement(dialect: str) -> sa.Insert:
    """INSERT ... ON CONFLICT (id) DO UPDATE of every column: the same SQL on SQLite and PostgreSQL."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(connections)
    updated = {col.name: stmt.excluded[col.name] for col in connections.c if col.name != "id"}
    return stmt.on_conflict_do_update(index_elements=[connections.c.id], set_=updated)


class BulkUpsert:
    """The connections upsert, compiled once for the dialect and fed driver-ready tuples through executemany.

    The values go through the columns' own bind processors, as SQLAlchemy would apply them; what is skipped is
    SQLAlchemy's per-row parameter bookkeeping, which was most of the time of a 100,000-state save. Timestamps
    repeat a lot within one save (an inventory stamps every connection with the same `now`), so their
    conversions are memoised per call."""

    def __init__(self, dialect: Dialect) -> None:
        compiled = upsert_statement(dialect.name).compile(dialect=dialect)
        if compiled.positiontup is None:
            raise RuntimeError(f"{dialect.name}: a positional paramstyle was expected")
        self.sql = compiled.string
        self._plan: list[tuple[int, Callable[[Any], Any] | None, bool]] = []
        for name in compiled.positiontup:
            column_type = connections.c[name].type
            process = column_type.dialect_impl(dialect).bind_processor(dialect)
            self._plan.append((_STATE_FIELDS.index(name), process, isinstance(column_type, UTCDateTime)))

    def rows(self, states: Iterable[ConnectionState]) -> list[tuple[Any, ...]]:
        """Driver-ready parameter tuples for `sql`, in its placeholder order."""
        memo: dict[datetime | None, Any] = {}
        plan = [
            (index, _memoised(process, memo) if is_timestamp and process else process)
            for index, process, is_timestamp in self._plan
        ]
        rows = []
        for state in states:
            values = list(_state_values(state))
            values[_STAGE] = state.lifecycle_stage.value
            values[_HEALTH] = state.health.value
            values[_PENDING] = _pending_json(state.pending_webhooks)
            rows.append(tuple(values[i] if p is None else p(values[i]) for i, p in plan))
        return rows


def _memoised(process: Callable[[Any], Any], memo: dict[datetime | None, Any]) -> Callable[[Any], Any]:
    def convert(value: datetime | None) -> Any:
        try:
            return memo[value]
        except KeyError:
            converted = memo[value] = process(value)
            return converted

    return convert


def _pending_json(pending: tuple[PendingWebhook, ...]) -> list[dict[str, str]]:
    return [{"code": p.code, "seen_at": p.seen_at.astimezone(UTC).isoformat()} for p in pending]


def state_from_row(row: sa.Row[Any]) -> ConnectionState:
    """A row of `STATE_COLUMNS`, whose order is the dataclass's field order."""
    values = list(row)
    values[_STAGE] = LifecycleStage(values[_STAGE])
    values[_HEALTH] = Health(values[_HEALTH])
    values[_PENDING] = tuple(
        PendingWebhook(code=p["code"], seen_at=datetime.fromisoformat(p["seen_at"]).astimezone(UTC))
        for p in values[_PENDING] or ()
    )
    return ConnectionState(*values)


def transition_row(t: Transition) -> dict[str, Any]:
    """Transition.from_ is spelled from_state in SQL, where `from` is a keyword."""
    return {
        "connection_id": t.connection_id,
        "dimension": t.dimension.value,
        "from_state": t.from_,
        "to_state": t.to,
        "at": t.at,
        "source": t.source.value,
        "reason": t.reason,
    }


def transition_from_row(row: sa.RowMapping) -> Transition:
    """A transitions row back as the domain value, enums restored."""
    return Transition(
        connection_id=row["connection_id"],
        dimension=Dimension(row["dimension"]),
        from_=row["from_state"],
        to=row["to_state"],
        at=row["at"],
        source=Source(row["source"]),
        reason=row["reason"],
    )


def inbox_row(item: InboxItem) -> dict[str, Any]:
    """The insert parameters of one inbox item; processed_at stays NULL until the event is processed."""
    return {
        "received_at": item.received_at,
        "code": item.code,
        "connection_id": item.connection_id,
        "body_hash": item.body_hash,
        "body": item.body,
        "access_token": item.access_token,
        "is_lifecycle": item.is_lifecycle,
    }


def inbox_item_from_row(row: sa.RowMapping) -> InboxItem:
    """A webhook_inbox row back as the item that was stored."""
    return InboxItem(
        received_at=row["received_at"],
        code=row["code"],
        connection_id=row["connection_id"],
        body_hash=row["body_hash"],
        body=row["body"],
        access_token=row["access_token"],
        is_lifecycle=bool(row["is_lifecycle"]),
    )


_SHARED_MAX = 4_096  # distinct values remembered per shared column while loading
# Loaded as shared objects (see _Shared): the platform and every timestamp, values that repeat across connections.
_SHARED_COLUMNS = frozenset({"platform", *(c.name for c in STATE_COLUMNS if isinstance(c.type, UTCDateTime))})


def shared_state_columns() -> list[sa.ColumnElement[Any]]:
    """STATE_COLUMNS for a bulk load: the platform and the timestamps read through `_Shared`."""
    return [sa.type_coerce(c, _Shared(c.type)) if c.name in _SHARED_COLUMNS else c for c in STATE_COLUMNS]


class _Shared(sa.TypeDecorator[Any]):
    """A column read as `base` reads it, but equal values come back as one object, converted once. An inventory
    stamps every state it builds with the same `now`, and 30 platform names serve 100,000 connections: loaded
    row by row, each of those was its own object, a quarter of the fleet's memory. The memo of one column is
    bounded, so a column of distinct values (created_at) only costs a lookup."""

    impl = sa.String  # never rendered: type_coerce only changes how results are processed
    cache_ok = True

    def __init__(self, base: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.base = base

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Callable[[Any], Any]:
        process = self.base.dialect_impl(dialect).result_processor(dialect, coltype)
        memo: dict[Any, Any] = {}

        def shared(value: Any) -> Any:
            try:
                return memo[value]
            except KeyError:
                if len(memo) >= _SHARED_MAX:
                    memo.clear()
                converted = memo[value] = value if process is None else process(value)
                return converted

        return shared

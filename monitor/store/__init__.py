"""The durable store: its port (a Protocol), the records that cross it, and its errors. The SQLAlchemy
implementation lives in monitor.store.sql; one code path serves SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from monitor.alerting.model import Attempt, Incident, OutboxMessage, OutboxRow, Storm, Thread
from monitor.domain import ConnectionState, Health, LifecycleStage, Transition


class StoreError(Exception):
    """The store could not be reached or refused the operation; the message never carries credentials."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A verified webhook to persist before it is acknowledged."""

    received_at: datetime
    code: str
    connection_id: str | None
    body_hash: str  # hex sha256 of the raw body, the dedupe key
    body: str  # the JSON body with every access_token redacted
    access_token: str | None  # kept out of the body; cleared once the event is processed
    is_lifecycle: bool


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """A persisted inbox row."""

    id: int
    item: InboxItem


@dataclass(frozen=True, slots=True)
class DedupeRow:
    """What dedupe needs to know of a recent inbox row."""

    id: int
    connection_id: str | None
    body_hash: str
    is_lifecycle: bool
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ConnectionQuery:
    """Filters and keyset pagination for the drill-down API. `cursor` is the last id of the previous page."""

    lifecycle_stage: LifecycleStage | None = None
    health: Health | None = None
    platform: str | None = None
    ids: frozenset[str] | None = None  # restrict to these ids (e.g. the stalled ones)
    include_deleted: bool = False
    limit: int = 100
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[ConnectionState]
    next_cursor: str | None


class Store(Protocol):
    async def ping(self) -> None:
        """Raise StoreError unless the store answers."""
        ...

    async def insert_inbox(self, items: Sequence[InboxItem]) -> list[int]:
        """Persist `items` in one transaction (group commit) and return their ids, in order."""
        ...

    async def unprocessed_inbox(self, limit: int) -> list[InboxRecord]:
        """Inbox rows not yet processed: lifecycle rows first, then entity rows, each lane oldest first. An entity
        webhook only stamps when data last arrived, so a disable need not wait behind a flood of them."""
        ...

    async def dedupe_rows(self, since: datetime) -> list[DedupeRow]:
        """Inbox rows received at or after `since`, by id, to rebuild the dedupe index after a restart."""
        ...

    async def inbox_backlog(self) -> tuple[int, datetime | None]:
        """How many inbox rows wait for processing, and when the oldest of them was received."""
        ...

    async def load_connections(self, include_deleted: bool = False) -> list[ConnectionState]:
        """Every connection's current state."""
        ...

    async def get_connection(self, connection_id: str) -> ConnectionState | None: ...

    async def save(
        self,
        states: Sequence[ConnectionState],
        transitions: Sequence[Transition] = (),
        processed_inbox_ids: Sequence[int] = (),
    ) -> None:
        """Upsert states, append transitions and mark inbox rows processed, all in one transaction."""
        ...

    async def list_connections(self, query: ConnectionQuery) -> Page: ...

    async def transitions(self, connection_id: str, limit: int = 1000) -> list[Transition]:
        """A connection's history, oldest first."""
        ...

    async def record_inventory(self, at: datetime, listed: int) -> None: ...

    async def last_inventory(self) -> datetime | None: ...

    async def prune(self, inbox_before: datetime, history_before: datetime) -> tuple[int, int]:
        """Delete processed inbox rows and transitions older than the cut-offs (and resolved incidents, storms and
        settled notifications older than `history_before`); return the inbox and transition counts."""
        ...

    # The incident engine and its outbox (monitor.alerting).

    async def load_alerting(self) -> tuple[list[Incident], list[Storm]]:
        """The open incidents and open storms."""
        ...

    async def save_alerting(
        self,
        changed: Sequence[Incident],
        changed_storms: Sequence[Storm] = (),
        messages: Sequence[OutboxMessage] = (),
        withdrawn: Sequence[str] = (),
    ) -> None:
        """Upsert incidents and storms, cancel the unattempted messages of `withdrawn` groups and enqueue
        `messages`, in one transaction."""
        ...

    async def outbox_heads(self) -> list[OutboxRow]:
        """The oldest pending message of each channel."""
        ...

    async def outbox_claim(self, row_id: int, at: datetime) -> OutboxRow | None:
        """Count an attempt before making it; None when the row is no longer pending."""
        ...

    async def outbox_record(self, row_id: int, attempt: Attempt) -> None:
        """Record an attempt's outcome."""
        ...

    async def outbox_thread(self, group: str) -> Thread | None:
        """Where a group's parent message landed (bot mode)."""
        ...

    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        """Pending messages, and when the oldest was enqueued."""
        ...

    async def close(self) -> None: ...

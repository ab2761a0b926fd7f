"""A simulated connection as Rutter holds it, and the values the fleet model exchanges with its callers."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.domain import ListStatus
from monitor.simulator.platforms import ENTITIES, category, store_domain

# Default `status` filter of `GET /connections` when the parameter is omitted.
DEFAULT_LIST_STATUSES: frozenset[ListStatus] = frozenset(
    {ListStatus.ACTIVE, ListStatus.NOT_READY, ListStatus.UNHEALTHY}
)
ALL_LIST_STATUSES: frozenset[ListStatus] = frozenset(ListStatus)


class SimError(Exception):
    """A control call that makes no sense for the connection's state (e.g. a batch before it is ready)."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """One batch of the data sync configuration: the most recent `months` of `entities`."""

    months: int
    entities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutgoingWebhook:
    """A webhook Rutter decided to send, before delivery faults and retries."""

    code: str
    connection_id: str
    payload: dict[str, Any]
    at: datetime


@dataclass(slots=True, eq=False)
class SimConnection:
    """One simulated connection. The model owns it: read its fields, change it only through FleetModel."""

    id: str
    access_token: str = field(repr=False)
    platform: str
    name: str
    store_name: str
    created_at: datetime
    updated_at: datetime
    plan: tuple[BatchPlan, ...]  # plan[0] is the initial batch; one entry means batching is not configured
    ready_at: datetime | None = None
    history_done: int = 0
    is_healthy: bool = True
    needs_update: bool = False
    disabled: bool = False
    disabled_reason: str | None = None
    deleted_at: datetime | None = None
    last_sync_started_at: datetime | None = None
    last_sync_completed_at: datetime | None = None
    entity_events: int = 0
    ready_due: datetime | None = None  # when evolution finishes the initial sync by itself
    evolve: bool = True
    generation: int = 0  # evolution bookkeeping: actions planned under an older generation are void
    item_json: bytes | None = field(default=None, repr=False)

    @property
    def store_domain(self) -> str:
        return store_domain(self.platform, self.store_name)

    @property
    def store_unique_id(self) -> str:
        """The platform's own id of the store or company (derived from the id: stable, and free to create)."""
        return str(int(self.id[:8], 16) * 1000 + int(self.id[9:12], 16) % 1000)

    @property
    def size(self) -> int:
        """Records in the merchant's full history, 200 to 200,000 (log-uniform): drives the synced counts."""
        return int(200 * 1000 ** (int(self.id[-6:], 16) / 0xFFFFFF))

    @property
    def history_batches(self) -> int:
        return len(self.plan) - 1

    @property
    def is_ready(self) -> bool:
        return self.ready_at is not None

    @property
    def historical_sync_completed(self) -> bool:
        return self.is_ready and self.history_done >= self.history_batches

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def link_url(self) -> str:
        return f"https://link.rutterapi.com/connection/{self.id}"

    @property
    def list_status(self) -> ListStatus:
        """Precedence: disabled > needs_reauth > unhealthy > not_ready > active."""
        if self.disabled:
            return ListStatus.DISABLED
        if self.needs_update:
            return ListStatus.NEEDS_REAUTH
        if not self.is_healthy:
            return ListStatus.UNHEALTHY
        if not self.is_ready:
            return ListStatus.NOT_READY
        return ListStatus.ACTIVE


@functools.lru_cache(maxsize=1024)
def default_plan(platform: str, history_batches: int) -> tuple[BatchPlan, ...]:
    """Batches covering 24 months: the most recent months first, then wider windows."""
    entities = ENTITIES[category(platform)]
    months = {0: [24], 1: [6, 24], 2: [6, 12, 24], 3: [3, 6, 12, 24]}[max(0, min(history_batches, 3))]
    months += [24] * max(0, history_batches - 3)
    return tuple(BatchPlan(m, entities) for m in months)

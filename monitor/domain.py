"""Values of the domain: closed sets as StrEnums; connections, observations, events and transitions as frozen
dataclasses. Nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class LifecycleStage(StrEnum):
    INITIAL_SYNC = "initial_sync"
    HISTORICAL_SYNC = "historical_sync"
    ONGOING = "ongoing"


STAGE_RANK: dict[LifecycleStage, int] = {
    LifecycleStage.INITIAL_SYNC: 0,
    LifecycleStage.HISTORICAL_SYNC: 1,
    LifecycleStage.ONGOING: 2,
}


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    NEEDS_UPDATE = "needs_update"
    DISABLED = "disabled"


class Source(StrEnum):
    WEBHOOK = "webhook"
    POLL = "poll"


class Dimension(StrEnum):
    LIFECYCLE_STAGE = "lifecycle_stage"
    HEALTH = "health"
    PRESENCE = "presence"


class Presence(StrEnum):
    PRESENT = "present"
    DELETED = "deleted"


class ListStatus(StrEnum):
    """The `status` filter values and item statuses of `GET /connections`."""

    ACTIVE = "active"
    UNHEALTHY = "unhealthy"
    NOT_READY = "not_ready"
    NEEDS_REAUTH = "needs_reauth"
    DISABLED = "disabled"


# Rutter's standardized disabled reasons (docs/rutter-api.md §2.1). "FAILED TO AUTHENTICATE" has spaces, as Rutter
# spells it. Anything else folds into "UNKNOWN" for metric labels so the label set stays bounded.
DISABLED_REASONS: frozenset[str] = frozenset(
    {
        "SHOP_API_KEY_EXPIRED",
        "SHOP_NOT_FOUND",
        "SHOP_ID_IS_INVALID",
        "SHOP_IS_DISABLED_OR_EXPIRED",
        "SHOP_IS_LOCKED",
        "SHOP_PAYMENT_REQUIRED",
        "TUNNEL_ERROR",
        "WEB_SERVICE_IS_DISABLED",
        "SHOP_IS_UNAVAILABLE",
        "CERT_EXPIRED",
        "FAILED TO AUTHENTICATE",
        "NEEDS_REAUTH",
        "REQUEST_TIMEOUT",
        "MANUALLY_DISABLED",
        "UNKNOWN",
    }
)

# Webhook codes that speak about a connection's lifecycle (as opposed to entity/data webhooks).
CONNECTION_CODES: frozenset[str] = frozenset(
    {
        "INITIAL_UPDATE",
        "HISTORICAL_UPDATE",
        "INCREMENTAL_SYNC_COMPLETED",
        "CONNECTION_METADATA_READY",
        "BACKFILL_COMPLETED",
        "CONNECTION_AUTHENTICATED",
        "CONNECTION_UPDATED",
        "CONNECTION_NEEDS_UPDATE",
        "CONNECTION_DISABLED",
        "CONNECTION_ERROR",
        "CONNECTION_LINK_ERROR",
        "JOB_COMPLETED",
        "CARD_ACTIVATION_ERROR",
        "VERSIONED_ENTITY",
    }
)

# Codes that change lifecycle state; a duplicate body is only a duplicate if none of these arrived in between.
LIFECYCLE_CODES: frozenset[str] = frozenset(
    {
        "INITIAL_UPDATE",
        "HISTORICAL_UPDATE",
        "CONNECTION_UPDATED",
        "CONNECTION_NEEDS_UPDATE",
        "CONNECTION_DISABLED",
    }
)

ENTITY_VERBS: tuple[str, ...] = ("_CREATED", "_UPDATED", "_DELETED")


def is_entity_code(code: str) -> bool:
    """Entity webhooks (ORDER_CREATED, EXPENSE_UPDATED, ...) only say that data flowed."""
    return code not in CONNECTION_CODES and (code.endswith(ENTITY_VERBS) or code in {"PRODUCT_READY"})


def code_label(code: str) -> str:
    """Bounded `code` label: connection codes by name, entity codes fold into ENTITY, the rest into OTHER."""
    if code in CONNECTION_CODES:
        return code
    if is_entity_code(code):
        return "ENTITY"
    return "OTHER"


def reason_label(reason: str | None) -> str:
    """Bounded `reason` label: a standardized disabled reason, or empty."""
    if not reason or reason == "null":
        return ""
    return reason if reason in DISABLED_REASONS else "UNKNOWN"


def derive_health(*, is_disabled: bool, needs_update: bool, is_unhealthy: bool) -> Health:
    """Precedence when several signals hold: disabled > needs_update > unhealthy > healthy."""
    if is_disabled:
        return Health.DISABLED
    if needs_update:
        return Health.NEEDS_UPDATE
    if is_unhealthy:
        return Health.UNHEALTHY
    return Health.HEALTHY


# ---------------------------------------------------------------------------------------------------------------
# What Rutter's API says (parsed at the edge by monitor.rutter).


@dataclass(frozen=True, slots=True)
class Listing:
    """One item of `GET /connections?status=any`."""

    id: str
    access_token: str = field(repr=False)
    platform: str
    status: str | None = None  # a ListStatus value, kept raw: new values may appear
    name: str | None = None
    link_url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """`GET /connections/status`: the authoritative view of one connection."""

    connection_id: str
    platform: str
    is_ready: bool
    needs_update: bool
    is_disabled: bool
    historical_sync_completed: bool
    is_healthy: bool | None = None  # absent before 2024-08-31
    disabled_reason: str | None = None
    link_url: str | None = None
    created_at: datetime | None = None
    last_sync_completed_at: datetime | None = None
    num_batches_completed: int | None = None
    synced_count: int | None = None  # sum of every synced count: a fingerprint of batch progress


@dataclass(frozen=True, slots=True)
class ConnectionDetails:
    """`GET /connections/access_token`: names and freshness of one connection."""

    id: str
    platform: str
    store_name: str | None = None
    store_domain: str | None = None
    created_at: datetime | None = None
    last_sync_completed_at: datetime | None = None
    last_sync_started_at: datetime | None = None


# ---------------------------------------------------------------------------------------------------------------
# Events fed to the lifecycle state machine.


@dataclass(frozen=True, slots=True)
class WebhookReceived:
    """A webhook for this connection; `status` is the status fetched when it was processed, when that worked."""

    code: str
    update_url: str | None = None
    disabled_reason: str | None = None
    status: StatusSnapshot | None = None
    details: ConnectionDetails | None = None


@dataclass(frozen=True, slots=True)
class StatusPolled:
    """A status refresh by the poller."""

    status: StatusSnapshot
    details: ConnectionDetails | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    """The connection appeared in an inventory."""

    listing: Listing


@dataclass(frozen=True, slots=True)
class Absent:
    """The connection was missing from an inventory the poller trusts (not a suspect one)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: lets expectations (missed-webhook grace) expire without any event."""


Event = WebhookReceived | StatusPolled | Listed | Absent | Tick


# ---------------------------------------------------------------------------------------------------------------
# State and what changes it produces.


@dataclass(frozen=True, slots=True)
class PendingWebhook:
    """Polling saw a change that webhook `code` should announce; if none comes within the grace, it was missed."""

    code: str
    seen_at: datetime


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """Everything the monitor knows about one connection. `health` always equals derive_health(flags)."""

    id: str
    platform: str
    lifecycle_stage: LifecycleStage
    health: Health
    stage_since: datetime
    health_since: datetime
    first_seen_at: datetime
    updated_at: datetime  # last time a tracked field changed: "recently changed" for poll priority
    access_token: str | None = field(default=None, repr=False)
    created_at: datetime | None = None
    name: str | None = None
    store_name: str | None = None
    link_url: str | None = None
    disabled_reason: str | None = None
    is_disabled: bool = False
    needs_update: bool = False
    is_unhealthy: bool = False
    ready_at: datetime | None = None
    historical_completed_at: datetime | None = None
    passed_historical: bool = False
    last_progress_at: datetime | None = None
    num_batches_completed: int | None = None
    synced_count: int | None = None
    last_sync_completed_at: datetime | None = None
    last_data_at: datetime | None = None
    sync_period_seconds: int | None = None
    last_status_at: datetime | None = None
    last_webhook_at: datetime | None = None
    absent_inventories: int = 0
    deleted_at: datetime | None = None
    pending_webhooks: tuple[PendingWebhook, ...] = ()

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded change of one dimension of one connection."""

    connection_id: str
    dimension: Dimension
    from_: str
    to: str
    at: datetime
    source: Source
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did to one connection. `state` is None when an event about an unknown connection is moot."""

    state: ConnectionState | None
    transitions: tuple[Transition, ...] = ()
    time_to_ready_seconds: float | None = None
    time_to_historical_complete_seconds: float | None = None
    missed_webhooks: tuple[str, ...] = ()  # codes of webhooks that polling proved were never delivered
    wants_status: bool = False  # the shell should refresh this connection's status soon
    changed: bool = False  # anything worth persisting changed

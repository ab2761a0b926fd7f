"""The pure lifecycle state machine: (state, event, now) -> Outcome. No I/O and no clock reads happen
here; the caller passes the time in, persists the new state and transitions, and feeds metrics and alerts.

- The stage follows authoritative readiness and never moves backwards, except that a *provisional* stage (a
  guess made without any status, never confirmed by a real stage transition) is corrected by the first status.
- Health is always derive_health(flags); the three flags are kept in the state.
- A connection seen for the first time is classified silently: no transition, no histogram observation.
- A transition polling sees first expects the webhook that should announce it; when none comes within the
  grace, its code is reported as a missed webhook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.domain import (
    STAGE_RANK,
    Absent,
    ConnectionDetails,
    ConnectionState,
    Dimension,
    Event,
    Health,
    LifecycleStage,
    Listed,
    ListStatus,
    Outcome,
    PendingWebhook,
    Presence,
    Source,
    StatusPolled,
    StatusSnapshot,
    Tick,
    Transition,
    WebhookReceived,
    derive_health,
    is_entity_code,
    reason_label,
)

UNKNOWN_PLATFORM = "unknown"

INITIAL_UPDATE = "INITIAL_UPDATE"
HISTORICAL_UPDATE = "HISTORICAL_UPDATE"
CONNECTION_UPDATED = "CONNECTION_UPDATED"
CONNECTION_NEEDS_UPDATE = "CONNECTION_NEEDS_UPDATE"
CONNECTION_DISABLED = "CONNECTION_DISABLED"
INCREMENTAL_SYNC_COMPLETED = "INCREMENTAL_SYNC_COMPLETED"

# Fields whose change does not make a connection "recently changed" (updated_at): observation bookkeeping.
_UNTRACKED: frozenset[str] = frozenset(
    {"updated_at", "last_webhook_at", "last_status_at", "last_data_at", "last_sync_completed_at"}
    | {"last_progress_at", "absent_inventories", "pending_webhooks"}
)
_TRACKED: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ConnectionState) if f.name not in _UNTRACKED)
_ACTION_HEALTH: frozenset[Health] = frozenset({Health.NEEDS_UPDATE, Health.DISABLED})

_INITIAL = LifecycleStage.INITIAL_SYNC
_HISTORICAL = LifecycleStage.HISTORICAL_SYNC
_ONGOING = LifecycleStage.ONGOING


@dataclass(frozen=True, slots=True)
class LifecycleSettings:
    """Knobs of the state machine."""

    missed_webhook_grace: timedelta = timedelta(minutes=15)


_DEFAULT_SETTINGS = LifecycleSettings()


@dataclass(frozen=True, slots=True)
class InventoryPlan:
    """What one inventory does to the known connections that it does not list."""

    absent: frozenset[str]  # ids to feed Absent() to
    suspect: bool  # True: this inventory would delete > half the fleet; feed nothing, wait for the next
    held: frozenset[str] = frozenset()  # ids a suspect plan held back; the next inventory confirms them


@dataclass(frozen=True, slots=True)
class _Step:
    """What an event handler decided, before stage, health and presence are settled."""

    state: ConnectionState  # every field updated except stage, health and their *_since
    target: LifecycleStage | None = None  # the stage the event says the connection has reached
    authoritative: bool = False  # the target comes from a status snapshot
    wants_status: bool = False


def source_of(event: Event) -> Source:
    """Webhooks announce; everything else is what polling saw."""
    return Source.WEBHOOK if isinstance(event, WebhookReceived) else Source.POLL


def stage_of(status: StatusSnapshot) -> LifecycleStage:
    """The stage a status snapshot implies."""
    if not status.is_ready:
        return _INITIAL
    return _ONGOING if status.historical_sync_completed else _HISTORICAL


def apply(
    state: ConnectionState | None,
    event: Event,
    now: datetime,
    *,
    connection_id: str,
    settings: LifecycleSettings = _DEFAULT_SETTINGS,
) -> Outcome:
    """Decide what `event` at `now` does to one connection: the one place lifecycle rules live."""
    if state is None:
        return _first_sight(event, now, connection_id)
    step = _handle(state, event, now)
    return _settle(state, step, now, source_of(event), settings)


def plan_inventory(
    known: Mapping[str, ConnectionState],
    listed_ids: Set[str],
    *,
    previous: InventoryPlan | None = None,
) -> InventoryPlan:
    """Which unlisted connections count an absence; a listing that would delete most of the fleet waits.

    An inventory *would delete* the connections it misses that an earlier inventory already missed (a second
    absence deletes). When those are more than half of the present fleet the inventory is suspect and feeds
    nothing, unless `previous` (the plan of the inventory just before) was suspect and held them back already:
    then this one confirms it.
    """
    present = {cid for cid, s in known.items() if not s.deleted}
    missing = frozenset(cid for cid in present if cid not in listed_ids)
    would_delete = frozenset(cid for cid in missing if known[cid].absent_inventories >= 1)
    confirmed = previous is not None and previous.suspect and would_delete <= previous.held
    if 2 * len(would_delete) > len(present) and not confirmed:
        return InventoryPlan(absent=frozenset(), suspect=True, held=would_delete)
    return InventoryPlan(absent=missing, suspect=False)


# First sight.


def _guess_stage(event: Event) -> LifecycleStage:
    """A provisional stage for an event that carries no status (corrected down by the first status)."""
    if isinstance(event, Listed):
        return _INITIAL if event.listing.status == ListStatus.NOT_READY else _ONGOING
    if isinstance(event, WebhookReceived) and event.code in {INITIAL_UPDATE, HISTORICAL_UPDATE}:
        return _HISTORICAL
    return _ONGOING


def _first_sight(event: Event, now: datetime, connection_id: str) -> Outcome:
    if isinstance(event, Absent | Tick):
        return Outcome(state=None)
    blank = ConnectionState(
        id=connection_id,
        platform=UNKNOWN_PLATFORM,
        lifecycle_stage=_INITIAL,
        health=Health.HEALTHY,
        stage_since=now,
        health_since=now,
        first_seen_at=now,
        updated_at=now,
    )
    step = _handle(blank, event, now)
    stage = step.target if step.authoritative and step.target is not None else _guess_stage(event)
    s = _normalize(step.state)
    s = replace(
        s,
        lifecycle_stage=stage,
        health=_health(s),
        # A guess of historical_sync from INITIAL_UPDATE alone does not prove any history batch was pending.
        passed_historical=stage == _HISTORICAL and (step.authoritative or step.state.passed_historical),
        pending_webhooks=(),
    )
    wants = step.wants_status or not step.authoritative
    return Outcome(state=s, wants_status=wants, changed=True)


# Event handlers: fields other than stage and health.


def _handle(s: ConnectionState, event: Event, now: datetime) -> _Step:
    if isinstance(event, WebhookReceived):
        return _on_webhook(s, event, now)
    if isinstance(event, StatusPolled):
        s = _with_details(s, event.details)
        return _Step(_with_status(s, event.status, now), stage_of(event.status), authoritative=True)
    if isinstance(event, Listed):
        return _on_listed(s, event)
    if isinstance(event, Absent):
        count = s.absent_inventories + 1
        deleted_at = s.deleted_at if s.deleted or count < 2 else now
        return _Step(replace(s, absent_inventories=count, deleted_at=deleted_at))
    return _Step(s)  # Tick: only expectations expire


def _on_webhook(s: ConnectionState, ev: WebhookReceived, now: datetime) -> _Step:
    pending = tuple(p for p in s.pending_webhooks if p.code != ev.code) if s.pending_webhooks else ()
    code = ev.code
    if ev.status is None and ev.details is None and (is_entity_code(code) or code == INCREMENTAL_SYNC_COMPLETED):
        # Data flowed, and nothing else is known: the bulk of all webhooks, in one copy of the state, not two.
        return _Step(replace(s, last_webhook_at=now, last_data_at=now, pending_webhooks=pending))
    s = replace(_with_details(s, ev.details), last_webhook_at=now, pending_webhooks=pending)
    status = ev.status
    target: LifecycleStage | None = None
    if status is not None:
        s = _with_status(s, status, now)
        target = stage_of(status)
    wants = False
    if code in {INITIAL_UPDATE, HISTORICAL_UPDATE}:
        if code == HISTORICAL_UPDATE:  # a history batch: the connection is, or was, in historical_sync
            # unless a status contradicts it (still not ready): then nothing proves a batch finished
            batch_proven = s.lifecycle_stage != _ONGOING and (target is None or target != _INITIAL)
            s = replace(s, last_progress_at=now, passed_historical=s.passed_historical or batch_proven)
        if status is None:
            # Ready at least; whether history is complete only a status can tell.
            target = _HISTORICAL
            wants = s.lifecycle_stage != _ONGOING
    elif code == CONNECTION_NEEDS_UPDATE:
        if status is None:
            s = replace(s, needs_update=True)
        s = replace(s, link_url=ev.update_url or s.link_url)
    elif code == CONNECTION_UPDATED:
        if status is None:
            s = replace(s, needs_update=False, is_disabled=False, is_unhealthy=False, disabled_reason=None)
            wants = True
    elif code == CONNECTION_DISABLED:
        if status is None:
            s = replace(s, is_disabled=True, disabled_reason=_reason(ev.disabled_reason) or s.disabled_reason)
        elif s.is_disabled:
            s = replace(s, disabled_reason=_reason(ev.disabled_reason) or s.disabled_reason)
        wants = s.is_disabled and s.disabled_reason is None and status is None
    elif is_entity_code(code) or code == INCREMENTAL_SYNC_COMPLETED:
        s = replace(s, last_data_at=now)
    return _Step(s, target, authoritative=status is not None, wants_status=wants)


def _on_listed(s: ConnectionState, ev: Listed) -> _Step:
    item = ev.listing
    before = _health(s)
    access_token = item.access_token or s.access_token
    name = item.name or s.name
    platform = item.platform or s.platform
    link_url = item.link_url or s.link_url
    created_at = s.created_at or item.created_at
    is_disabled, needs_update, is_unhealthy = s.is_disabled, s.needs_update, s.is_unhealthy
    wants = False
    if item.status == ListStatus.ACTIVE:
        is_disabled = needs_update = is_unhealthy = False
        # Ready, but whether history is complete only a status can tell: one transition, made by the status.
        wants = s.lifecycle_stage == _INITIAL
    elif item.status == ListStatus.UNHEALTHY:
        is_unhealthy, is_disabled, needs_update = True, False, False
    elif item.status == ListStatus.NEEDS_REAUTH:
        needs_update, is_disabled = True, False
    elif item.status == ListStatus.DISABLED:
        is_disabled = True
        wants = s.disabled_reason is None
    # One replace, and none when the listing says nothing new: an inventory lists 100,000 mostly unchanged
    # connections, and each replace of this 33-field dataclass costs microseconds (bench/scale.py).
    new = (access_token, name, platform, link_url, created_at, 0, None, is_disabled, needs_update, is_unhealthy)
    old = (s.access_token, s.name, s.platform, s.link_url, s.created_at, s.absent_inventories, s.deleted_at,
           s.is_disabled, s.needs_update, s.is_unhealthy)  # fmt: skip
    if new != old:
        s = replace(
            s,
            access_token=access_token,
            name=name,
            platform=platform,
            link_url=link_url,
            created_at=created_at,
            absent_inventories=0,
            deleted_at=None,
            is_disabled=is_disabled,
            needs_update=needs_update,
            is_unhealthy=is_unhealthy,
        )
    s = _normalize(s)
    # A move into or out of needs-update or disabled wants the status (the reason, what a reconnect restored);
    # into or out of unhealthy the status adds nothing to what the listing said, and refreshing each of them cost
    # 3% of an hour's requests at 10,000 connections (bench/economy.py).
    after = _health(s)
    action = after in _ACTION_HEALTH or before in _ACTION_HEALTH
    return _Step(s, wants_status=wants or (after != before and action))


def _with_details(s: ConnectionState, details: ConnectionDetails | None) -> ConnectionState:
    if details is None:
        return s
    return replace(
        s,
        store_name=details.store_name or s.store_name,
        platform=s.platform if s.platform != UNKNOWN_PLATFORM else details.platform or s.platform,
        created_at=s.created_at or details.created_at,
        last_sync_completed_at=_latest(s.last_sync_completed_at, details.last_sync_completed_at),
    )


def _with_status(s: ConnectionState, status: StatusSnapshot, now: datetime) -> ConnectionState:
    """The status is authoritative for the flags; progress is any change of the batch fingerprint."""
    progressed = _changed(s.num_batches_completed, status.num_batches_completed) or _changed(
        s.synced_count, status.synced_count
    )
    return replace(
        s,
        platform=status.platform or s.platform,
        is_disabled=status.is_disabled,
        needs_update=status.needs_update,
        is_unhealthy=s.is_unhealthy if status.is_healthy is None else not status.is_healthy,
        disabled_reason=_reason(status.disabled_reason),
        link_url=status.link_url or s.link_url,
        created_at=s.created_at or status.created_at,
        last_sync_completed_at=_latest(s.last_sync_completed_at, status.last_sync_completed_at),
        num_batches_completed=_known(status.num_batches_completed, s.num_batches_completed),
        synced_count=_known(status.synced_count, s.synced_count),
        last_progress_at=now if progressed else s.last_progress_at,
        last_status_at=now,
    )


# Settling: stage, health, presence, transitions, observations and expectations.


def _settle(old: ConnectionState, step: _Step, now: datetime, source: Source, settings: LifecycleSettings) -> Outcome:
    s = _normalize(step.state)
    transitions: list[Transition] = []
    expected: list[str] = []
    time_to_ready: float | None = None
    time_to_historical: float | None = None

    stage = old.lifecycle_stage
    target = step.target
    if target is not None and STAGE_RANK[target] > STAGE_RANK[stage]:
        transitions.append(_transition(old.id, Dimension.LIFECYCLE_STAGE, stage, target, now, source))
        s = replace(s, lifecycle_stage=target, stage_since=now)
        if stage == _INITIAL:
            expected.append(INITIAL_UPDATE)
            time_to_ready = _seconds_since(s.created_at, now)
            s = replace(s, ready_at=now)
        else:  # historical_sync -> ongoing
            if not _provisional(old):  # a guessed historical_sync came from a webhook that may have been the last
                expected.append(HISTORICAL_UPDATE)
            s = replace(s, historical_completed_at=now)
            if s.passed_historical:
                time_to_historical = _seconds_since(s.created_at, now)
        if target == _HISTORICAL:
            s = replace(s, passed_historical=True)
    elif target is not None and target != stage and step.authoritative and _provisional(old):
        # The first status corrects a guess: not a transition, nothing observed, stage_since kept.
        s = replace(s, lifecycle_stage=target, passed_historical=target == _HISTORICAL)

    health = _health(s)
    if health != old.health:
        reason = reason_label(s.disabled_reason) if health == Health.DISABLED else ""
        transitions.append(_transition(old.id, Dimension.HEALTH, old.health, health, now, source, reason))
        s = replace(s, health=health, health_since=now)
        if health == Health.NEEDS_UPDATE:
            expected.append(CONNECTION_NEEDS_UPDATE)
        elif health == Health.DISABLED:
            expected.append(CONNECTION_DISABLED)
        elif old.health in _ACTION_HEALTH:
            expected.append(CONNECTION_UPDATED)

    if s.deleted != old.deleted:
        presence = (Presence.PRESENT, Presence.DELETED) if s.deleted else (Presence.DELETED, Presence.PRESENT)
        transitions.append(_transition(old.id, Dimension.PRESENCE, *presence, now, Source.POLL))

    pending = s.pending_webhooks
    if source == Source.POLL:
        codes = {p.code for p in pending}
        pending += tuple(PendingWebhook(code, now) for code in expected if code not in codes)
    missed = tuple(p.code for p in pending if p.seen_at + settings.missed_webhook_grace <= now)
    if missed:
        pending = tuple(p for p in pending if p.seen_at + settings.missed_webhook_grace > now)
    if pending != s.pending_webhooks:
        s = replace(s, pending_webhooks=pending)

    if transitions or any(getattr(s, f) != getattr(old, f) for f in _TRACKED):
        s = replace(s, updated_at=now)
    return Outcome(
        state=s,
        transitions=tuple(transitions),
        time_to_ready_seconds=time_to_ready,
        time_to_historical_complete_seconds=time_to_historical,
        missed_webhooks=missed,
        wants_status=step.wants_status,
        changed=s is not old and s != old,
    )


def _transition(
    connection_id: str,
    dimension: Dimension,
    from_: str,
    to: str,
    at: datetime,
    source: Source,
    reason: str = "",
) -> Transition:
    return Transition(connection_id, dimension, str(from_), str(to), at, source, reason)


# Small helpers.


def _provisional(s: ConnectionState) -> bool:
    """A stage guessed without any status and never confirmed by a real stage transition."""
    return s.last_status_at is None and s.ready_at is None and s.historical_completed_at is None


def _health(s: ConnectionState) -> Health:
    return derive_health(is_disabled=s.is_disabled, needs_update=s.needs_update, is_unhealthy=s.is_unhealthy)


def _normalize(s: ConnectionState) -> ConnectionState:
    """A disabled reason means something only while disabled."""
    return s if s.is_disabled or s.disabled_reason is None else replace(s, disabled_reason=None)


def _reason(reason: str | None) -> str | None:
    return None if not reason or reason == "null" else reason


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _known(new: int | None, old: int | None) -> int | None:
    return old if new is None else new


def _changed(old: int | None, new: int | None) -> bool:
    return old is not None and new is not None and old != new


def _seconds_since(start: datetime | None, now: datetime) -> float | None:
    return None if start is None else max(0.0, (now - start).total_seconds())

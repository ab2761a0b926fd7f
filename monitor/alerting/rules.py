"""The alert rules of SPEC's alert table, as pure functions of (connection state, now, thresholds).

No I/O and no clock reads: the caller passes `now`. `evaluate` says which conditions hold; `next_deadline`
says when the next time-based rule could start to hold, so a scheduler can wake up exactly then."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from monitor.domain import ConnectionState, Health, LifecycleStage


class AlertName(StrEnum):
    """The `alert` label of our metrics; fixed by the alerting issue."""

    CONNECTION_DISABLED = "connection_disabled"
    CONNECTION_NEEDS_UPDATE = "connection_needs_update"
    CONNECTION_UNHEALTHY = "connection_unhealthy"
    INITIAL_SYNC_STALLED = "initial_sync_stalled"
    HISTORICAL_SYNC_STALLED = "historical_sync_stalled"
    SYNC_STALE = "sync_stale"


ALERTMANAGER_NAMES: dict[AlertName, str] = {
    AlertName.CONNECTION_DISABLED: "RutterConnectionDisabled",
    AlertName.CONNECTION_NEEDS_UPDATE: "RutterConnectionNeedsUpdate",
    AlertName.CONNECTION_UNHEALTHY: "RutterConnectionUnhealthy",
    AlertName.INITIAL_SYNC_STALLED: "RutterInitialSyncStalled",
    AlertName.HISTORICAL_SYNC_STALLED: "RutterHistoricalSyncStalled",
    AlertName.SYNC_STALE: "RutterSyncStale",
}


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


SEVERITY: dict[AlertName, Severity] = {
    AlertName.CONNECTION_DISABLED: Severity.CRITICAL,
    AlertName.CONNECTION_NEEDS_UPDATE: Severity.WARNING,
    AlertName.CONNECTION_UNHEALTHY: Severity.WARNING,
    AlertName.INITIAL_SYNC_STALLED: Severity.WARNING,
    AlertName.HISTORICAL_SYNC_STALLED: Severity.WARNING,
    AlertName.SYNC_STALE: Severity.WARNING,
}

# Stage stalls stay quiet while one of these holds: the health alert already says what is wrong.
_QUIETING_HEALTH: frozenset[Health] = frozenset({Health.DISABLED, Health.NEEDS_UPDATE})


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How long a condition must last before its alert fires (SPEC defaults)."""

    unhealthy_after: timedelta = timedelta(hours=1)
    initial_sync_stall_after: timedelta = timedelta(hours=6)
    historical_sync_stall_after: timedelta = timedelta(hours=24)
    sync_stale_after: timedelta = timedelta(hours=3)
    sync_stale_periods: int = 3  # used instead of sync_stale_after when the connection's sync period is known


@dataclass(frozen=True, slots=True)
class ThresholdPolicy:
    """Default thresholds with complete per-platform overrides (slow NETSUITE onboarding, fast SHOPIFY...)."""

    default: Thresholds = field(default_factory=Thresholds)
    platforms: Mapping[str, Thresholds] = field(default_factory=dict)

    def for_platform(self, platform: str) -> Thresholds:
        """The override for `platform` (exact, then upper case as Rutter spells it), else the default."""
        found = self.platforms.get(platform)
        if found is None:
            found = self.platforms.get(platform.upper())
        return found if found is not None else self.default


@dataclass(frozen=True, slots=True)
class Condition:
    """One alert condition holding for one connection; `since` is when the condition started."""

    alert: AlertName
    severity: Severity
    since: datetime
    reason: str = ""  # the disabled_reason of a disable, else empty


def _reason(state: ConnectionState) -> str:
    reason = state.disabled_reason
    return "" if not reason or reason == "null" else reason


def _condition(alert: AlertName, since: datetime, reason: str = "") -> Condition:
    return Condition(alert=alert, severity=SEVERITY[alert], since=since, reason=reason)


# Each timed rule gives (alert, start of the condition, how long it must last) when its preconditions hold
# now, or None when it cannot fire whatever the time. It fires once now - start >= the duration.
_Timed = tuple[AlertName, datetime, timedelta]


def _unhealthy(state: ConnectionState, t: Thresholds) -> _Timed | None:
    if state.health is not Health.UNHEALTHY:
        return None
    return AlertName.CONNECTION_UNHEALTHY, state.health_since, t.unhealthy_after


def _initial_sync(state: ConnectionState, t: Thresholds) -> _Timed | None:
    if state.lifecycle_stage is not LifecycleStage.INITIAL_SYNC or state.health in _QUIETING_HEALTH:
        return None
    # Onboarding time counts from when Rutter created the connection, not from when we first saw it.
    start = state.created_at if state.created_at is not None else state.stage_since
    return AlertName.INITIAL_SYNC_STALLED, start, t.initial_sync_stall_after


def _historical_sync(state: ConnectionState, t: Thresholds) -> _Timed | None:
    if state.lifecycle_stage is not LifecycleStage.HISTORICAL_SYNC or state.health in _QUIETING_HEALTH:
        return None
    # Entering historical_sync is itself a completed batch, so progress older than that does not count.
    start = state.stage_since
    if state.last_progress_at is not None and state.last_progress_at > start:
        start = state.last_progress_at
    return AlertName.HISTORICAL_SYNC_STALLED, start, t.historical_sync_stall_after


def _sync_stale(state: ConnectionState, t: Thresholds) -> _Timed | None:
    if state.lifecycle_stage is not LifecycleStage.ONGOING or state.health is not Health.HEALTHY:
        return None
    fresh = [d for d in (state.last_sync_completed_at, state.last_data_at) if d is not None]
    start = max([state.stage_since, *fresh])
    if state.sync_period_seconds is not None and state.sync_period_seconds > 0:
        limit = timedelta(seconds=state.sync_period_seconds * t.sync_stale_periods)
    else:
        limit = t.sync_stale_after
    return AlertName.SYNC_STALE, start, limit


_TIMED_RULES: tuple[Callable[[ConnectionState, Thresholds], _Timed | None], ...] = (
    _unhealthy,
    _initial_sync,
    _historical_sync,
    _sync_stale,
)


def evaluate(state: ConnectionState, now: datetime, thresholds: Thresholds) -> tuple[Condition, ...]:
    """Every alert condition that holds for `state` at `now`; a deleted connection has none."""
    if state.deleted:
        return ()
    found: list[Condition] = []
    if state.health is Health.DISABLED:
        found.append(_condition(AlertName.CONNECTION_DISABLED, state.health_since, _reason(state)))
    elif state.health is Health.NEEDS_UPDATE:
        found.append(_condition(AlertName.CONNECTION_NEEDS_UPDATE, state.health_since))
    for rule in _TIMED_RULES:
        timed = rule(state, thresholds)
        if timed is not None:
            alert, start, duration = timed
            if now - start >= duration:
                found.append(_condition(alert, start))
    return tuple(found)


def next_deadline(state: ConnectionState, now: datetime, thresholds: Thresholds) -> datetime | None:
    """The earliest time after `now` at which a rule not holding now would hold if nothing else happened."""
    if state.deleted:
        return None
    deadlines: list[datetime] = []
    for rule in _TIMED_RULES:
        timed = rule(state, thresholds)
        if timed is not None:
            _, start, duration = timed
            due = start + duration
            if due > now:
                deadlines.append(due)
    return min(deadlines, default=None)

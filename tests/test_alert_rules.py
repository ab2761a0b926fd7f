"""The alert rules: SPEC's alert table, each rule quiet one second before its threshold and firing at it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.alerting.rules import (
    ALERTMANAGER_NAMES,
    SEVERITY,
    AlertName,
    Condition,
    Severity,
    ThresholdPolicy,
    Thresholds,
    evaluate,
    next_deadline,
)
from monitor.domain import ConnectionState, Health, LifecycleStage
from tests.states import connection_state

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
H = timedelta(hours=1)
DEFAULTS = Thresholds()


def conn(**changes: Any) -> ConnectionState:
    """A healthy ongoing SHOPIFY connection first seen at T0, with `changes` applied."""
    return connection_state("conn-1", T0, **changes)


def names(conditions: tuple[Condition, ...]) -> set[AlertName]:
    return {c.alert for c in conditions}


INITIAL = LifecycleStage.INITIAL_SYNC
HISTORICAL = LifecycleStage.HISTORICAL_SYNC

# (case id, state, alert, when the condition started, when it must fire)
TIMED_CASES = [
    (
        "unhealthy",
        conn(health=Health.UNHEALTHY, is_unhealthy=True),
        AlertName.CONNECTION_UNHEALTHY,
        T0,
        T0 + H,
    ),
    (
        "initial-from-created-at",
        conn(lifecycle_stage=INITIAL, created_at=T0 - 2 * H),
        AlertName.INITIAL_SYNC_STALLED,
        T0 - 2 * H,
        T0 + 4 * H,
    ),
    (
        "initial-from-stage-since",
        conn(lifecycle_stage=INITIAL),
        AlertName.INITIAL_SYNC_STALLED,
        T0,
        T0 + 6 * H,
    ),
    (
        "historical-no-progress",
        conn(lifecycle_stage=HISTORICAL),
        AlertName.HISTORICAL_SYNC_STALLED,
        T0,
        T0 + 24 * H,
    ),
    (
        "historical-after-progress",
        conn(lifecycle_stage=HISTORICAL, last_progress_at=T0 + 5 * H),
        AlertName.HISTORICAL_SYNC_STALLED,
        T0 + 5 * H,
        T0 + 29 * H,
    ),
    (
        "historical-ignores-progress-before-stage",
        conn(lifecycle_stage=HISTORICAL, last_progress_at=T0 - 3 * H),
        AlertName.HISTORICAL_SYNC_STALLED,
        T0,
        T0 + 24 * H,
    ),
    ("stale-from-stage-since", conn(), AlertName.SYNC_STALE, T0, T0 + 3 * H),
    (
        "stale-from-last-sync",
        conn(last_sync_completed_at=T0 + H, last_data_at=T0 + H / 2),
        AlertName.SYNC_STALE,
        T0 + H,
        T0 + 4 * H,
    ),
    (
        "stale-from-last-data",
        conn(last_sync_completed_at=T0 + H, last_data_at=T0 + 2 * H),
        AlertName.SYNC_STALE,
        T0 + 2 * H,
        T0 + 5 * H,
    ),
    (
        "stale-three-sync-periods",
        conn(last_sync_completed_at=T0 + H, sync_period_seconds=600),
        AlertName.SYNC_STALE,
        T0 + H,
        T0 + H + timedelta(minutes=30),
    ),
]


@pytest.mark.parametrize(
    ("state", "alert", "start", "due"), [c[1:] for c in TIMED_CASES], ids=[c[0] for c in TIMED_CASES]
)
def test_timed_rule_is_quiet_one_second_before_its_threshold(
    state: ConnectionState, alert: AlertName, start: datetime, due: datetime
) -> None:
    """A timed rule is quiet a second before its threshold, and gives that threshold as its deadline."""
    assert alert not in names(evaluate(state, due - SECOND, DEFAULTS))
    assert next_deadline(state, due - SECOND, DEFAULTS) == due


@pytest.mark.parametrize(
    ("state", "alert", "start", "due"), [c[1:] for c in TIMED_CASES], ids=[c[0] for c in TIMED_CASES]
)
def test_timed_rule_fires_at_its_threshold_with_since(
    state: ConnectionState, alert: AlertName, start: datetime, due: datetime
) -> None:
    """At exactly its threshold a timed rule fires a warning whose `since` is when the condition began."""
    fired = [c for c in evaluate(state, due, DEFAULTS) if c.alert is alert]
    assert fired == [Condition(alert=alert, severity=Severity.WARNING, since=start, reason="")]


def test_disabled_fires_at_once_as_critical_with_its_reason() -> None:
    """A disable fires at once, critical, since health_since, carrying the disabled reason."""
    state = conn(health=Health.DISABLED, is_disabled=True, health_since=T0, disabled_reason="SHOP_PAYMENT_REQUIRED")
    assert evaluate(state, T0, DEFAULTS) == (
        Condition(AlertName.CONNECTION_DISABLED, Severity.CRITICAL, T0, "SHOP_PAYMENT_REQUIRED"),
    )


@pytest.mark.parametrize("reason", [None, "", "null"])
def test_disabled_without_reason_has_empty_reason(reason: str | None) -> None:
    """A missing disabled_reason (JSON null, or Rutter's string "null") renders as an empty reason."""
    state = conn(health=Health.DISABLED, is_disabled=True, disabled_reason=reason)
    assert evaluate(state, T0, DEFAULTS)[0].reason == ""


def test_needs_update_fires_at_once_as_warning() -> None:
    """A connection needing an update fires connection_needs_update immediately, as a warning."""
    state = conn(health=Health.NEEDS_UPDATE, needs_update=True, health_since=T0 + H)
    assert evaluate(state, T0 + H, DEFAULTS) == (
        Condition(AlertName.CONNECTION_NEEDS_UPDATE, Severity.WARNING, T0 + H, ""),
    )


@pytest.mark.parametrize("stage", [INITIAL, HISTORICAL])
@pytest.mark.parametrize(
    ("health", "alert"),
    [
        (Health.DISABLED, AlertName.CONNECTION_DISABLED),
        (Health.NEEDS_UPDATE, AlertName.CONNECTION_NEEDS_UPDATE),
    ],
)
def test_stage_stalls_are_quiet_while_disabled_or_needing_update(
    stage: LifecycleStage, health: Health, alert: AlertName
) -> None:
    """Long past every stall threshold, a disabled or needs-update connection fires only its health alert."""
    state = conn(lifecycle_stage=stage, health=health)
    assert names(evaluate(state, T0 + 100 * H, DEFAULTS)) == {alert}
    assert next_deadline(state, T0, DEFAULTS) is None


def test_unhealthy_does_not_quiet_a_stage_stall() -> None:
    """An unhealthy connection stuck in initial sync fires both the unhealthy and the stall alerts."""
    state = conn(lifecycle_stage=INITIAL, health=Health.UNHEALTHY, is_unhealthy=True)
    assert names(evaluate(state, T0 + 6 * H, DEFAULTS)) == {
        AlertName.CONNECTION_UNHEALTHY,
        AlertName.INITIAL_SYNC_STALLED,
    }


@pytest.mark.parametrize("health", [Health.UNHEALTHY, Health.DISABLED, Health.NEEDS_UPDATE])
def test_sync_stale_needs_a_healthy_connection(health: Health) -> None:
    """Sync stale fires only for healthy ongoing connections; the health alert covers the others."""
    state = conn(health=health)
    assert AlertName.SYNC_STALE not in names(evaluate(state, T0 + 100 * H, DEFAULTS))


def test_deleted_connection_fires_nothing() -> None:
    """A deleted connection fires nothing and schedules nothing, whatever its last state."""
    state = conn(lifecycle_stage=INITIAL, health=Health.DISABLED, deleted_at=T0)
    assert evaluate(state, T0 + 100 * H, DEFAULTS) == ()
    assert next_deadline(state, T0, DEFAULTS) is None


def test_next_deadline_is_the_earliest_rule_not_yet_firing() -> None:
    """With two timed rules pending the earlier deadline comes first, then the later once the first fires."""
    state = conn(lifecycle_stage=INITIAL, health=Health.UNHEALTHY, is_unhealthy=True)
    assert next_deadline(state, T0, DEFAULTS) == T0 + H
    assert next_deadline(state, T0 + H, DEFAULTS) == T0 + 6 * H
    assert next_deadline(state, T0 + 6 * H, DEFAULTS) is None


def test_fresh_sync_moves_the_stale_deadline() -> None:
    """A completed sync restarts the sync-stale clock."""
    assert next_deadline(conn(last_sync_completed_at=T0 + 2 * H), T0 + 2 * H, DEFAULTS) == T0 + 5 * H


def test_platform_override_changes_the_threshold_for_that_platform_only() -> None:
    """A NETSUITE override of initial_sync_stall_after to 24 h leaves other platforms at 6 h."""
    policy = ThresholdPolicy(
        default=DEFAULTS, platforms={"NETSUITE": replace(DEFAULTS, initial_sync_stall_after=24 * H)}
    )
    netsuite = conn(platform="NETSUITE", lifecycle_stage=INITIAL)
    shopify = conn(platform="SHOPIFY", lifecycle_stage=INITIAL)
    at_six = T0 + 6 * H

    assert AlertName.INITIAL_SYNC_STALLED in names(evaluate(shopify, at_six, policy.for_platform("SHOPIFY")))
    assert names(evaluate(netsuite, at_six, policy.for_platform("NETSUITE"))) == set()
    assert names(evaluate(netsuite, T0 + 24 * H - SECOND, policy.for_platform("NETSUITE"))) == set()
    assert AlertName.INITIAL_SYNC_STALLED in names(evaluate(netsuite, T0 + 24 * H, policy.for_platform("NETSUITE")))


def test_policy_matches_platform_case_insensitively_and_defaults_otherwise() -> None:
    """Platform overrides match Rutter's upper-case names; unknown platforms get the default thresholds."""
    fast = replace(DEFAULTS, sync_stale_after=H)
    policy = ThresholdPolicy(default=DEFAULTS, platforms={"SHOPIFY": fast})
    assert policy.for_platform("SHOPIFY") is fast
    assert policy.for_platform("shopify") is fast
    assert policy.for_platform("XERO") is DEFAULTS
    assert ThresholdPolicy().for_platform("XERO") == Thresholds()


def test_names_and_severities_are_fixed() -> None:
    """Every alert has its fixed Alertmanager name, and only disabled is critical."""
    assert {a.value: ALERTMANAGER_NAMES[a] for a in AlertName} == {
        "connection_disabled": "RutterConnectionDisabled",
        "connection_needs_update": "RutterConnectionNeedsUpdate",
        "connection_unhealthy": "RutterConnectionUnhealthy",
        "initial_sync_stalled": "RutterInitialSyncStalled",
        "historical_sync_stalled": "RutterHistoricalSyncStalled",
        "sync_stale": "RutterSyncStale",
    }
    assert {a for a in AlertName if SEVERITY[a] is Severity.CRITICAL} == {AlertName.CONNECTION_DISABLED}


def test_default_thresholds_match_the_spec() -> None:
    """The defaults are SPEC's: 1 h unhealthy, 6 h initial, 24 h historical, 3 h or 3 periods stale."""
    assert Thresholds() == Thresholds(
        unhealthy_after=H,
        initial_sync_stall_after=6 * H,
        historical_sync_stall_after=24 * H,
        sync_stale_after=3 * H,
        sync_stale_periods=3,
    )


_offsets = st.integers(min_value=-48 * 3600, max_value=48 * 3600).map(lambda s: T0 + timedelta(seconds=s))
_states = st.builds(
    conn,
    lifecycle_stage=st.sampled_from(LifecycleStage),
    health=st.sampled_from(Health),
    stage_since=_offsets,
    health_since=_offsets,
    created_at=st.none() | _offsets,
    last_progress_at=st.none() | _offsets,
    last_sync_completed_at=st.none() | _offsets,
    last_data_at=st.none() | _offsets,
    sync_period_seconds=st.none() | st.integers(min_value=60, max_value=86400),
)


@given(state=_states, now=_offsets)
def test_nothing_changes_before_the_deadline_and_something_fires_at_it(state: ConnectionState, now: datetime) -> None:
    """Between now and next_deadline the conditions stay the same, and at the deadline a new one fires."""
    before = names(evaluate(state, now, DEFAULTS))
    deadline = next_deadline(state, now, DEFAULTS)
    if deadline is None:
        assert names(evaluate(state, now + 1000 * H, DEFAULTS)) == before
        return
    assert deadline > now
    assert names(evaluate(state, deadline - timedelta(microseconds=1), DEFAULTS)) == before
    assert names(evaluate(state, deadline, DEFAULTS)) > before

"""Table tests of the pure lifecycle state machine (monitor.lifecycle): SPEC's lifecycle table row by row,
then precedence, monotonic stages, first sight, histograms, deletion, inventories and missed webhooks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.domain import (
    Absent,
    ConnectionDetails,
    ConnectionState,
    Dimension,
    Event,
    Health,
    LifecycleStage,
    Listed,
    Listing,
    Outcome,
    PendingWebhook,
    Source,
    StatusPolled,
    StatusSnapshot,
    Tick,
    WebhookReceived,
    derive_health,
)
from monitor.lifecycle import InventoryPlan, LifecycleSettings, apply, plan_inventory

CID = "0b5c3a1e-0000-4000-8000-000000000001"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CREATED = T0 - timedelta(hours=2)
EARLIER = T0 - timedelta(hours=1)
NOW = T0
GRACE = LifecycleSettings().missed_webhook_grace

INITIAL = LifecycleStage.INITIAL_SYNC
HISTORICAL = LifecycleStage.HISTORICAL_SYNC
ONGOING = LifecycleStage.ONGOING
STAGE = Dimension.LIFECYCLE_STAGE
HEALTH = Dimension.HEALTH
PRESENCE = Dimension.PRESENCE
WEBHOOK = Source.WEBHOOK
POLL = Source.POLL


def status(
    *,
    ready: bool = True,
    complete: bool = True,
    needs_update: bool = False,
    disabled: bool = False,
    healthy: bool | None = True,
    reason: str | None = None,
    batches: int | None = None,
    synced: int | None = None,
    last_sync: datetime | None = None,
) -> StatusSnapshot:
    return StatusSnapshot(
        connection_id=CID,
        platform="SHOPIFY",
        is_ready=ready,
        needs_update=needs_update,
        is_disabled=disabled,
        historical_sync_completed=complete,
        is_healthy=healthy,
        disabled_reason=reason,
        link_url="https://link.rutterapi.com/connection/abc",
        created_at=CREATED,
        last_sync_completed_at=last_sync,
        num_batches_completed=batches,
        synced_count=synced,
    )


def known(
    stage: LifecycleStage = ONGOING,
    *,
    is_disabled: bool = False,
    needs_update: bool = False,
    is_unhealthy: bool = False,
    **fields: object,
) -> ConnectionState:
    """A connection known from an earlier status, with consistent health."""
    base = ConnectionState(
        id=CID,
        platform="SHOPIFY",
        lifecycle_stage=stage,
        health=derive_health(is_disabled=is_disabled, needs_update=needs_update, is_unhealthy=is_unhealthy),
        stage_since=EARLIER,
        health_since=EARLIER,
        first_seen_at=EARLIER,
        updated_at=EARLIER,
        access_token="tok-secret",
        created_at=CREATED,
        is_disabled=is_disabled,
        needs_update=needs_update,
        is_unhealthy=is_unhealthy,
        disabled_reason="SHOP_IS_LOCKED" if is_disabled else None,
        passed_historical=stage == HISTORICAL,
        last_status_at=EARLIER,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def listing(list_status: str | None, **fields: object) -> Listed:
    item = Listing(id=CID, access_token="tok-secret", platform="SHOPIFY", status=list_status, created_at=CREATED)
    return Listed(replace(item, **fields))  # type: ignore[arg-type]


def hook(code: str, **fields: object) -> WebhookReceived:
    return WebhookReceived(code=code, **fields)  # type: ignore[arg-type]


def run(state: ConnectionState | None, event: Event, now: datetime = NOW) -> Outcome:
    return apply(state, event, now, connection_id=CID)


Move = tuple[Dimension, str, str, Source, str]


def moves(outcome: Outcome) -> list[Move]:
    return [(t.dimension, t.from_, t.to, t.source, t.reason) for t in outcome.transitions]


def st(outcome: Outcome) -> ConnectionState:
    assert outcome.state is not None
    return outcome.state


# ----------------------------------------------------------------------------------------------------
# SPEC's lifecycle table, one row (or one way of seeing it) per case.


@dataclass(frozen=True)
class Row:
    before: ConnectionState
    event: Event
    stage: LifecycleStage
    health: Health
    moves: tuple[Move, ...] = ()
    ready_seconds: float | None = None
    historical_seconds: float | None = None
    pending: tuple[str, ...] = ()
    wants_status: bool = False
    changed: bool = True


def row(
    case_id: str,
    before: ConnectionState,
    event: Event,
    *moves: Move,
    stage: LifecycleStage | None = None,
    health: Health | None = None,
    ready_seconds: float | None = None,
    historical_seconds: float | None = None,
    pending: tuple[str, ...] = (),
    wants_status: bool = False,
    changed: bool = True,
) -> object:
    """One table row; stage and health default to those before the event."""
    expected = Row(
        before,
        event,
        stage or before.lifecycle_stage,
        health or before.health,
        moves,
        ready_seconds,
        historical_seconds,
        pending,
        wants_status,
        changed,
    )
    return pytest.param(expected, id=case_id)


def sm(from_: str, to: str, source: Source) -> Move:
    return (STAGE, from_, to, source, "")


def hm(from_: str, to: str, source: Source, reason: str = "") -> Move:
    return (HEALTH, from_, to, source, reason)


AGE = (NOW - CREATED).total_seconds()
I_, H_, O_ = "initial_sync", "historical_sync", "ongoing"
OK, SICK, REAUTH, OFF = "healthy", "unhealthy", "needs_update", "disabled"
ROWS = [
    # INITIAL_UPDATE · status is_ready: true
    row("initial-update-with-status-to-historical", known(INITIAL),
        hook("INITIAL_UPDATE", status=status(complete=False)), sm(I_, H_, WEBHOOK),
        stage=HISTORICAL, ready_seconds=AGE),
    row("initial-update-with-status-straight-to-ongoing", known(INITIAL),
        hook("INITIAL_UPDATE", status=status()), sm(I_, O_, WEBHOOK), stage=ONGOING, ready_seconds=AGE),
    row("initial-update-without-status-assumes-historical", known(INITIAL), hook("INITIAL_UPDATE"),
        sm(I_, H_, WEBHOOK), stage=HISTORICAL, ready_seconds=AGE, wants_status=True),
    row("status-ready-polled-to-historical", known(INITIAL), StatusPolled(status(complete=False)),
        sm(I_, H_, POLL), stage=HISTORICAL, ready_seconds=AGE, pending=("INITIAL_UPDATE",)),
    row("status-ready-and-complete-polled-to-ongoing", known(INITIAL), StatusPolled(status()),
        sm(I_, O_, POLL), stage=ONGOING, ready_seconds=AGE, pending=("INITIAL_UPDATE",)),
    # HISTORICAL_UPDATE · historical_sync_status
    row("historical-update-with-completed-status-to-ongoing", known(HISTORICAL),
        hook("HISTORICAL_UPDATE", status=status()), sm(H_, O_, WEBHOOK), stage=ONGOING,
        historical_seconds=AGE),
    row("historical-update-with-pending-history-stays", known(HISTORICAL),
        hook("HISTORICAL_UPDATE", status=status(complete=False))),
    row("historical-update-without-status-asks-status", known(HISTORICAL), hook("HISTORICAL_UPDATE"),
        wants_status=True),
    row("historical-update-implies-ready", known(INITIAL), hook("HISTORICAL_UPDATE"), sm(I_, H_, WEBHOOK),
        stage=HISTORICAL, ready_seconds=AGE, wants_status=True),
    row("status-history-completed-polled-to-ongoing", known(HISTORICAL), StatusPolled(status()),
        sm(H_, O_, POLL), stage=ONGOING, historical_seconds=AGE, pending=("HISTORICAL_UPDATE",)),
    # CONNECTION_NEEDS_UPDATE · needs_update_status.needs_update
    row("needs-update-webhook", known(), hook("CONNECTION_NEEDS_UPDATE", update_url="https://link/u"),
        hm(OK, REAUTH, WEBHOOK), health=Health.NEEDS_UPDATE),
    row("needs-update-status-polled", known(), StatusPolled(status(needs_update=True)), hm(OK, REAUTH, POLL),
        health=Health.NEEDS_UPDATE, pending=("CONNECTION_NEEDS_UPDATE",)),
    row("needs-reauth-listing-already-known", known(needs_update=True), listing("needs_reauth"),
        changed=False),
    row("needs-reauth-listing", known(), listing("needs_reauth"), hm(OK, REAUTH, POLL),
        health=Health.NEEDS_UPDATE, pending=("CONNECTION_NEEDS_UPDATE",), wants_status=True),
    # CONNECTION_UPDATED
    row("updated-after-needs-update", known(needs_update=True), hook("CONNECTION_UPDATED"),
        hm(REAUTH, OK, WEBHOOK), health=Health.HEALTHY, wants_status=True),
    row("updated-after-disable-with-status", known(is_disabled=True),
        hook("CONNECTION_UPDATED", status=status()),
        hm(OFF, OK, WEBHOOK), health=Health.HEALTHY),
    row("reconnect-seen-by-polling", known(is_disabled=True), StatusPolled(status()), hm(OFF, OK, POLL),
        health=Health.HEALTHY, pending=("CONNECTION_UPDATED",)),
    row("updated-re-evaluates-health-from-status", known(),
        hook("CONNECTION_UPDATED", status=status(healthy=False)), hm(OK, SICK, WEBHOOK),
        health=Health.UNHEALTHY),
    # CONNECTION_DISABLED · disabled_status.is_disabled
    row("disabled-webhook-with-reason", known(),
        hook("CONNECTION_DISABLED", disabled_reason="SHOP_NOT_FOUND"),
        hm(OK, OFF, WEBHOOK, "SHOP_NOT_FOUND"), health=Health.DISABLED),
    row("disabled-webhook-reason-from-status", known(),
        hook("CONNECTION_DISABLED", status=status(disabled=True, reason="FAILED TO AUTHENTICATE")),
        hm(OK, OFF, WEBHOOK, "FAILED TO AUTHENTICATE"), health=Health.DISABLED),
    row("disabled-webhook-reason-unknown-asks-status", known(), hook("CONNECTION_DISABLED"),
        hm(OK, OFF, WEBHOOK), health=Health.DISABLED, wants_status=True),
    row("disabled-status-polled-unknown-reason-folds", known(),
        StatusPolled(status(disabled=True, reason="SOMETHING_NEW")), hm(OK, OFF, POLL, "UNKNOWN"),
        health=Health.DISABLED, pending=("CONNECTION_DISABLED",)),
    row("disabled-listing", known(), listing("disabled"), hm(OK, OFF, POLL), health=Health.DISABLED,
        pending=("CONNECTION_DISABLED",), wants_status=True),
    # list status=unhealthy · status is_healthy: false (no webhook exists for it); the status would add nothing
    row("unhealthy-listing-no-webhook-expected", known(), listing("unhealthy"), hm(OK, SICK, POLL),
        health=Health.UNHEALTHY),
    row("unhealthy-listing-recovers", known(is_unhealthy=True), listing("active"), hm(SICK, OK, POLL),
        health=Health.HEALTHY),
    row("unhealthy-status-polled", known(), StatusPolled(status(healthy=False)), hm(OK, SICK, POLL),
        health=Health.UNHEALTHY),
    row("unhealthy-recovers-no-webhook-expected", known(is_unhealthy=True), StatusPolled(status()),
        hm(SICK, OK, POLL), health=Health.HEALTHY),
    row("status-without-is-healthy-keeps-flag", known(is_unhealthy=True), StatusPolled(status(healthy=None))),
    # other listing statuses
    row("active-listing-clears-flags", known(is_disabled=True), listing("active"), hm(OFF, OK, POLL),
        health=Health.HEALTHY, pending=("CONNECTION_UPDATED",), wants_status=True),
    row("active-listing-in-initial-sync-waits-for-status", known(INITIAL), listing("active"),
        wants_status=True, changed=False),
    row("not-ready-listing-changes-nothing", known(INITIAL, is_unhealthy=True), listing("not_ready"),
        changed=False),
    row("unknown-listing-status-ignored", known(), listing("some_new_status"), changed=False),
    # freshness signals and the rest
    row("entity-webhook-freshness-only", known(), hook("ORDER_CREATED")),
    row("incremental-sync-freshness-only", known(), hook("INCREMENTAL_SYNC_COMPLETED")),
    row("other-code-changes-nothing", known(), hook("JOB_COMPLETED")),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS)
def test_lifecycle_table(row: Row) -> None:
    """Each signal of SPEC's lifecycle table moves stage and health, records transitions and observations."""
    out = run(row.before, row.event)
    s = st(out)
    assert (s.lifecycle_stage, s.health) == (row.stage, row.health)
    assert moves(out) == list(row.moves)
    assert out.time_to_ready_seconds == row.ready_seconds
    assert out.time_to_historical_complete_seconds == row.historical_seconds
    assert tuple(p.code for p in s.pending_webhooks) == row.pending
    assert out.wants_status is row.wants_status
    assert out.changed is row.changed
    flags = {"is_disabled": s.is_disabled, "needs_update": s.needs_update, "is_unhealthy": s.is_unhealthy}
    assert s.health == derive_health(**flags)
    assert all(t.at == NOW and t.connection_id == CID for t in out.transitions)
    assert s.stage_since == (NOW if any(m[0] == STAGE for m in row.moves) else EARLIER)
    assert s.health_since == (NOW if any(m[0] == HEALTH for m in row.moves) else EARLIER)


def test_freshness_signals() -> None:
    """Entity webhooks and INCREMENTAL_SYNC_COMPLETED mark data freshness; a status brings the last sync."""
    assert st(run(known(), hook("EXPENSE_UPDATED"))).last_data_at == NOW
    assert st(run(known(), hook("INCREMENTAL_SYNC_COMPLETED"))).last_data_at == NOW
    assert st(run(known(), hook("CONNECTION_ERROR"))).last_data_at is None
    synced = T0 - timedelta(minutes=7)
    assert st(run(known(), StatusPolled(status(last_sync=synced)))).last_sync_completed_at == synced


def test_needs_update_keeps_the_link_for_the_alert() -> None:
    """CONNECTION_NEEDS_UPDATE keeps update_url as link_url."""
    s = st(run(known(), hook("CONNECTION_NEEDS_UPDATE", update_url="https://link.rutterapi.com/connection/x")))
    assert s.link_url == "https://link.rutterapi.com/connection/x"


def test_webhook_marks_last_webhook_without_counting_as_a_change_of_tracked_fields() -> None:
    """An unknown webhook code only sets last_webhook_at: changed, but updated_at stays."""
    out = run(known(), hook("SOMETHING_ELSE"))
    assert st(out).last_webhook_at == NOW
    assert st(out).updated_at == EARLIER
    assert out.changed
    assert not out.transitions


# ----------------------------------------------------------------------------------------------------
# Precedence and monotonic stage.


@pytest.mark.parametrize(
    ("disabled", "needs_update", "healthy", "health"),
    [
        pytest.param(True, True, False, Health.DISABLED, id="all-three-disabled-wins"),
        pytest.param(True, False, False, Health.DISABLED, id="disabled-over-unhealthy"),
        pytest.param(True, True, True, Health.DISABLED, id="disabled-over-needs-update"),
        pytest.param(False, True, False, Health.NEEDS_UPDATE, id="needs-update-over-unhealthy"),
        pytest.param(False, False, False, Health.UNHEALTHY, id="unhealthy"),
        pytest.param(False, False, True, Health.HEALTHY, id="healthy"),
    ],
)
def test_health_precedence(disabled: bool, needs_update: bool, healthy: bool, health: Health) -> None:
    """Several signals at once resolve as disabled > needs_update > unhealthy > healthy, flags all kept."""
    s = st(run(known(), StatusPolled(status(disabled=disabled, needs_update=needs_update, healthy=healthy))))
    assert s.health == health
    assert (s.is_disabled, s.needs_update, s.is_unhealthy) == (disabled, needs_update, not healthy)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(hook("INITIAL_UPDATE"), id="late-initial-update"),
        pytest.param(hook("INITIAL_UPDATE", status=status(ready=False, complete=False)), id="stale-status-webhook"),
        pytest.param(StatusPolled(status(ready=False, complete=False)), id="stale-status-not-ready"),
        pytest.param(StatusPolled(status(complete=False)), id="stale-status-history-pending"),
        pytest.param(hook("HISTORICAL_UPDATE"), id="late-historical-update"),
        pytest.param(listing("not_ready"), id="stale-listing-not-ready"),
    ],
)
def test_ongoing_never_moves_backwards(event: Event) -> None:
    """A late INITIAL_UPDATE or a stale status for an ongoing connection changes no stage."""
    out = run(known(ONGOING), event)
    assert st(out).lifecycle_stage == ONGOING
    assert st(out).stage_since == EARLIER
    assert not out.transitions
    assert out.time_to_ready_seconds is None


def test_historical_never_moves_back_to_initial() -> None:
    """A stale not-ready status for a connection in historical_sync changes no stage."""
    out = run(known(HISTORICAL), StatusPolled(status(ready=False, complete=False)))
    assert st(out).lifecycle_stage == HISTORICAL
    assert not out.transitions


# ----------------------------------------------------------------------------------------------------
# First sight and provisional stages.


@pytest.mark.parametrize(
    ("event", "stage", "health", "platform", "wants_status"),
    [
        pytest.param(listing("not_ready"), INITIAL, Health.HEALTHY, "SHOPIFY", True, id="listing-not-ready"),
        pytest.param(listing("active"), ONGOING, Health.HEALTHY, "SHOPIFY", True, id="listing-active"),
        pytest.param(listing("unhealthy"), ONGOING, Health.UNHEALTHY, "SHOPIFY", True, id="listing-unhealthy"),
        pytest.param(listing("needs_reauth"), ONGOING, Health.NEEDS_UPDATE, "SHOPIFY", True, id="listing-reauth"),
        pytest.param(listing("disabled"), ONGOING, Health.DISABLED, "SHOPIFY", True, id="listing-disabled"),
        pytest.param(listing(None), ONGOING, Health.HEALTHY, "SHOPIFY", True, id="listing-without-status"),
        pytest.param(
            StatusPolled(status(ready=False, complete=False)),
            INITIAL,
            Health.HEALTHY,
            "SHOPIFY",
            False,
            id="status-not-ready",
        ),
        pytest.param(
            StatusPolled(status(complete=False)),
            HISTORICAL,
            Health.HEALTHY,
            "SHOPIFY",
            False,
            id="status-history-pending",
        ),
        pytest.param(
            StatusPolled(status(disabled=True)),
            ONGOING,
            Health.DISABLED,
            "SHOPIFY",
            False,
            id="status-disabled",
        ),
        pytest.param(hook("INITIAL_UPDATE"), HISTORICAL, Health.HEALTHY, "unknown", True, id="initial-update"),
        pytest.param(hook("HISTORICAL_UPDATE"), HISTORICAL, Health.HEALTHY, "unknown", True, id="historical-update"),
        pytest.param(hook("ORDER_CREATED"), ONGOING, Health.HEALTHY, "unknown", True, id="entity-webhook"),
        pytest.param(hook("CONNECTION_DISABLED"), ONGOING, Health.DISABLED, "unknown", True, id="disabled-hook"),
        pytest.param(
            hook("INITIAL_UPDATE", status=status()),
            ONGOING,
            Health.HEALTHY,
            "SHOPIFY",
            False,
            id="initial-update-with-status",
        ),
    ],
)
def test_first_sight_is_silent(
    event: Event, stage: LifecycleStage, health: Health, platform: str, wants_status: bool
) -> None:
    """A connection seen for the first time is classified with no transition and no histogram observation."""
    out = run(None, event)
    s = st(out)
    assert (s.lifecycle_stage, s.health, s.platform) == (stage, health, platform)
    assert not out.transitions
    assert out.time_to_ready_seconds is None
    assert out.time_to_historical_complete_seconds is None
    assert s.first_seen_at == s.stage_since == s.health_since == s.updated_at == NOW
    assert s.pending_webhooks == ()
    assert out.wants_status is wants_status
    assert out.changed


@pytest.mark.parametrize("event", [pytest.param(Absent(), id="absent"), pytest.param(Tick(), id="tick")])
def test_moot_events_about_unknown_connections(event: Event) -> None:
    """Absent and Tick about an unknown connection create nothing."""
    out = run(None, event)
    assert out.state is None
    assert not out.changed


def test_first_sight_keeps_details_and_token() -> None:
    """First sight keeps the listing's token, name and created_at, and a status's details' store name."""
    s = st(run(None, listing("active", name="Acme", link_url="https://l")))
    assert (s.access_token, s.name, s.created_at, s.link_url) == ("tok-secret", "Acme", CREATED, "https://l")
    details = ConnectionDetails(id=CID, platform="SHOPIFY", store_name="Acme Store")
    assert st(run(None, StatusPolled(status(), details=details))).store_name == "Acme Store"


def test_provisional_stage_corrected_down_silently() -> None:
    """A listed-active guess of ongoing is corrected by the first status without transition, then moves up."""
    guessed = st(run(None, listing("active"), EARLIER))
    corrected = run(guessed, StatusPolled(status(ready=False, complete=False)))
    s = st(corrected)
    assert s.lifecycle_stage == INITIAL
    assert s.stage_since == EARLIER == s.first_seen_at
    assert not corrected.transitions
    assert corrected.time_to_ready_seconds is None
    # Once a status is known the stage is no longer provisional: a real move up is a transition.
    later = NOW + timedelta(minutes=30)
    ready = apply(s, StatusPolled(status()), later, connection_id=CID)
    assert moves(ready) == [(STAGE, "initial_sync", "ongoing", POLL, "")]
    assert ready.time_to_ready_seconds == (later - CREATED).total_seconds()


def test_provisional_historical_guess_corrected_to_initial() -> None:
    """INITIAL_UPDATE for an unknown connection without status guesses historical; a status may correct it."""
    guessed = st(run(None, hook("INITIAL_UPDATE"), EARLIER))
    out = run(guessed, StatusPolled(status(ready=False, complete=False)))
    assert st(out).lifecycle_stage == INITIAL
    assert not st(out).passed_historical
    assert not out.transitions


def test_provisional_stage_moving_up_is_a_real_transition() -> None:
    """A connection listed not_ready and then found ready by its status records the move and time-to-ready."""
    seen = st(run(None, listing("not_ready"), EARLIER))
    out = run(seen, StatusPolled(status(complete=False)))
    assert moves(out) == [(STAGE, "initial_sync", "historical_sync", POLL, "")]
    assert out.time_to_ready_seconds == AGE
    assert st(out).ready_at == NOW
    assert st(out).passed_historical


@pytest.mark.parametrize(
    ("code", "historical_seconds"),
    [
        pytest.param("INITIAL_UPDATE", None, id="initial-update-proves-no-history-batch"),
        pytest.param("HISTORICAL_UPDATE", AGE, id="historical-update-proves-a-history-batch"),
    ],
)
def test_leaving_a_guessed_historical_sync(code: str, historical_seconds: float | None) -> None:
    """A historical_sync guessed from a webhook moves on by a transition that expects no HISTORICAL_UPDATE."""
    guessed = st(run(None, hook(code), EARLIER))
    out = run(guessed, StatusPolled(status()))
    assert moves(out) == [(STAGE, "historical_sync", "ongoing", POLL, "")]
    assert out.time_to_historical_complete_seconds == historical_seconds
    assert st(out).pending_webhooks == ()


def test_stage_moved_by_a_webhook_is_no_longer_provisional() -> None:
    """After a webhook really moved a listed not_ready connection on, a stale status cannot move it back."""
    seen = st(run(None, listing("not_ready"), EARLIER))
    moved = st(run(seen, hook("INITIAL_UPDATE"), EARLIER + timedelta(minutes=1)))
    out = run(moved, StatusPolled(status(ready=False, complete=False)))
    assert st(out).lifecycle_stage == HISTORICAL
    assert not out.transitions


# ----------------------------------------------------------------------------------------------------
# Histograms.


def test_time_to_historical_complete_only_after_passing_historical() -> None:
    """Passing through historical_sync observes time-to-ready, then time-to-historical-complete."""
    t1, t2 = NOW, NOW + timedelta(hours=5)
    first = run(known(INITIAL), hook("INITIAL_UPDATE", status=status(complete=False)), t1)
    second = apply(st(first), hook("HISTORICAL_UPDATE", status=status()), t2, connection_id=CID)
    assert first.time_to_ready_seconds == (t1 - CREATED).total_seconds()
    assert first.time_to_historical_complete_seconds is None
    assert second.time_to_ready_seconds is None
    assert second.time_to_historical_complete_seconds == (t2 - CREATED).total_seconds()
    s = st(second)
    assert (s.ready_at, s.historical_completed_at) == (t1, t2)


def test_straight_to_ongoing_observes_only_time_to_ready() -> None:
    """initial_sync -> ongoing in one move observes time-to-ready and no time-to-historical-complete."""
    out = run(known(INITIAL), StatusPolled(status()))
    assert out.time_to_ready_seconds == AGE
    assert out.time_to_historical_complete_seconds is None
    assert st(out).historical_completed_at is None


def test_no_observation_without_created_at() -> None:
    """Without a known created_at no duration can be observed, but the transition is recorded."""
    snap = replace(status(), created_at=None)
    out = run(known(INITIAL, created_at=None), StatusPolled(snap))
    assert out.time_to_ready_seconds is None
    assert len(out.transitions) == 1


def test_created_at_filled_only_when_missing() -> None:
    """created_at comes from the API once and is then kept."""
    assert st(run(known(created_at=None), StatusPolled(status()))).created_at == CREATED
    other = T0 - timedelta(days=3)
    assert st(run(known(created_at=other), listing("active"))).created_at == other


# ----------------------------------------------------------------------------------------------------
# Batch progress.


def test_batch_progress_from_status_fingerprint() -> None:
    """A change of num_batches_completed or synced_count is progress; the first known value is not."""
    first = st(run(known(HISTORICAL), StatusPolled(status(complete=False, batches=1, synced=10))))
    assert first.last_progress_at is None
    later = NOW + timedelta(minutes=5)
    same = st(apply(first, StatusPolled(status(complete=False, batches=1, synced=10)), later, connection_id=CID))
    assert same.last_progress_at is None
    moved = st(apply(first, StatusPolled(status(complete=False, batches=1, synced=11)), later, connection_id=CID))
    assert moved.last_progress_at == later
    unknown = st(apply(first, StatusPolled(status(complete=False)), later, connection_id=CID))
    assert unknown.last_progress_at is None
    assert unknown.num_batches_completed == 1


def test_historical_update_is_progress() -> None:
    """Every HISTORICAL_UPDATE marks batch progress."""
    assert st(run(known(HISTORICAL), hook("HISTORICAL_UPDATE"))).last_progress_at == NOW


# ----------------------------------------------------------------------------------------------------
# Listing, deletion and inventories.


def test_listing_refreshes_identity() -> None:
    """A listing refreshes the access token, name and link and resets the absence count."""
    before = known(access_token="old", absent_inventories=1)
    s = st(run(before, listing("active", access_token="new", name="Shop", link_url="https://l2")))
    assert (s.access_token, s.name, s.link_url, s.absent_inventories) == ("new", "Shop", "https://l2", 0)


def test_deleted_after_two_absences_and_back_when_listed() -> None:
    """Two absences delete (one presence transition); more change no presence; a listing brings it back."""
    one = run(known(), Absent())
    assert not one.transitions
    assert not st(one).deleted
    assert st(one).absent_inventories == 1
    two = run(st(one), Absent(), NOW + timedelta(minutes=5))
    assert moves(two) == [(PRESENCE, "present", "deleted", POLL, "")]
    assert st(two).deleted_at == NOW + timedelta(minutes=5)
    three = run(st(two), Absent(), NOW + timedelta(minutes=10))
    assert not three.transitions
    assert st(three).deleted_at == NOW + timedelta(minutes=5)
    back = run(st(three), listing("active"), NOW + timedelta(minutes=15))
    assert moves(back) == [(PRESENCE, "deleted", "present", POLL, "")]
    assert st(back).deleted_at is None
    assert st(back).absent_inventories == 0


def _fleet(n: int, absent_once: int = 0) -> dict[str, ConnectionState]:
    return {f"c{i}": known(id=f"c{i}", absent_inventories=1 if i < absent_once else 0) for i in range(n)}


def test_plan_inventory_normal() -> None:
    """Unlisted present connections get Absent; deleted ones and listed ones do not."""
    fleet = _fleet(4) | {"gone": known(id="gone", deleted_at=EARLIER)}
    plan = plan_inventory(fleet, {"c0", "c1", "c2"})
    assert plan == InventoryPlan(absent=frozenset({"c3"}), suspect=False)


def test_plan_inventory_first_mass_absence_only_counts() -> None:
    """A first mass absence deletes nothing yet, so it is counted, not suspect."""
    plan = plan_inventory(_fleet(10), set())
    assert not plan.suspect
    assert len(plan.absent) == 10


@pytest.mark.parametrize(
    ("missing", "suspect"),
    [pytest.param(5, False, id="exactly-half-deletes"), pytest.param(6, True, id="more-than-half-waits")],
)
def test_plan_inventory_suspect_above_half(missing: int, suspect: bool) -> None:
    """An inventory that would delete more than half of the fleet is suspect and feeds nothing."""
    fleet = _fleet(10, absent_once=missing)
    plan = plan_inventory(fleet, {f"c{i}" for i in range(missing, 10)})
    assert plan.suspect is suspect
    assert plan.absent == (frozenset() if suspect else frozenset(f"c{i}" for i in range(missing)))


def test_plan_inventory_suspect_confirmed_by_the_next() -> None:
    """The inventory after a suspect one confirms it when it misses the same connections."""
    fleet = _fleet(10, absent_once=8)
    listed = {"c8", "c9"}
    first = plan_inventory(fleet, listed)
    assert first.suspect
    assert first.held == frozenset(f"c{i}" for i in range(8))
    second = plan_inventory(fleet, listed, previous=first)
    assert not second.suspect
    assert second.absent == first.held
    other = plan_inventory(_fleet(10, absent_once=10), set(), previous=first)
    assert other.suspect, "missing more than the suspect plan held needs its own confirmation"


# ----------------------------------------------------------------------------------------------------
# Missed webhooks.


def test_missed_webhook_expires_after_grace_not_a_second_early() -> None:
    """A disable seen by polling is reported missed exactly when the grace has passed with no webhook."""
    polled = st(run(known(), StatusPolled(status(disabled=True, reason="SHOP_IS_LOCKED"))))
    assert polled.pending_webhooks == (PendingWebhook("CONNECTION_DISABLED", NOW),)
    early = run(polled, Tick(), NOW + GRACE - timedelta(seconds=1))
    assert early.missed_webhooks == ()
    assert not early.changed
    due = run(polled, Tick(), NOW + GRACE)
    assert due.missed_webhooks == ("CONNECTION_DISABLED",)
    assert st(due).pending_webhooks == ()
    assert due.changed
    again = run(st(due), Tick(), NOW + GRACE)
    assert again.missed_webhooks == ()
    assert not again.changed


def test_missed_webhook_cancelled_by_the_webhook() -> None:
    """The announcing webhook arriving within the grace cancels the expectation, and makes no transition."""
    polled = st(run(known(), StatusPolled(status(disabled=True, reason="SHOP_IS_LOCKED"))))
    hooked = run(polled, hook("CONNECTION_DISABLED"), NOW + timedelta(minutes=5))
    assert st(hooked).pending_webhooks == ()
    assert not hooked.transitions
    assert st(hooked).disabled_reason == "SHOP_IS_LOCKED"
    assert run(st(hooked), Tick(), NOW + GRACE).missed_webhooks == ()


def test_missed_webhook_expires_on_any_event_and_honours_settings() -> None:
    """Expectations expire on whatever event comes next, using the configured grace."""
    polled = st(run(known(INITIAL), StatusPolled(status())))
    assert {p.code for p in polled.pending_webhooks} == {"INITIAL_UPDATE"}
    short = LifecycleSettings(missed_webhook_grace=timedelta(minutes=1))
    out = apply(polled, hook("ORDER_CREATED"), NOW + timedelta(minutes=1), connection_id=CID, settings=short)
    assert out.missed_webhooks == ("INITIAL_UPDATE",)


def test_pending_webhooks_not_duplicated() -> None:
    """A second poll-seen change expecting the same code does not add a second expectation."""
    expectation = PendingWebhook("CONNECTION_DISABLED", NOW - timedelta(minutes=5))
    out = run(known(pending_webhooks=(expectation,)), StatusPolled(status(disabled=True)))
    assert st(out).pending_webhooks == (expectation,)


def test_webhook_driven_changes_expect_nothing() -> None:
    """A transition announced by a webhook leaves no expectation behind."""
    out = run(known(INITIAL), hook("INITIAL_UPDATE", status=status()))
    assert st(out).pending_webhooks == ()


# ----------------------------------------------------------------------------------------------------
# Sequences and idempotence.


def test_disable_reconnect_disable_gives_two_disables() -> None:
    """disable -> reconnect -> disable with identical disable bodies records two disables."""
    s: ConnectionState | None = known()
    recorded = []
    for minute, event in enumerate(
        [
            hook("CONNECTION_DISABLED", disabled_reason="SHOP_IS_LOCKED"),
            hook("CONNECTION_UPDATED"),
            hook("CONNECTION_DISABLED", disabled_reason="SHOP_IS_LOCKED"),
        ]
    ):
        out = run(s, event, NOW + timedelta(minutes=minute))
        recorded += moves(out)
        s = out.state
    assert recorded == [
        (HEALTH, "healthy", "disabled", WEBHOOK, "SHOP_IS_LOCKED"),
        (HEALTH, "disabled", "healthy", WEBHOOK, ""),
        (HEALTH, "healthy", "disabled", WEBHOOK, "SHOP_IS_LOCKED"),
    ]


def test_reason_cleared_when_no_longer_disabled() -> None:
    """A disabled reason does not outlive the disable."""
    assert st(run(known(is_disabled=True), listing("unhealthy"))).disabled_reason is None


IDEMPOTENT_EVENTS = [
    pytest.param(hook("INITIAL_UPDATE"), id="initial-update"),
    pytest.param(hook("INITIAL_UPDATE", status=status(complete=False)), id="initial-update-with-status"),
    pytest.param(hook("HISTORICAL_UPDATE"), id="historical-update"),
    pytest.param(hook("CONNECTION_DISABLED", disabled_reason="CERT_EXPIRED"), id="disabled"),
    pytest.param(hook("CONNECTION_NEEDS_UPDATE", update_url="https://u"), id="needs-update"),
    pytest.param(hook("CONNECTION_UPDATED"), id="updated"),
    pytest.param(hook("ORDER_CREATED"), id="entity"),
    pytest.param(StatusPolled(status(disabled=True, batches=2, synced=5)), id="status"),
    pytest.param(listing("unhealthy"), id="listing"),
    pytest.param(Tick(), id="tick"),
]


@pytest.mark.parametrize("event", IDEMPOTENT_EVENTS)
@pytest.mark.parametrize("before", [pytest.param(known(INITIAL), id="initial"), pytest.param(None, id="new")])
def test_same_event_twice_changes_nothing_the_second_time(before: ConnectionState | None, event: Event) -> None:
    """Applying the same event twice at the same instant changes nothing the second time."""
    first = run(before, event)
    second = run(first.state, event)
    assert second.state == first.state
    assert not second.changed
    assert not second.transitions
    assert not second.missed_webhooks

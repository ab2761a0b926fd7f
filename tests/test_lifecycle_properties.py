"""Properties of the lifecycle state machine (monitor.lifecycle), checked with hypothesis: any permutation
and duplication of a connection's webhooks converges to what the authoritative status implies, and invariants
hold along any sequence of events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import hypothesis.strategies as hs
from hypothesis import given, settings

from monitor.domain import (
    STAGE_RANK,
    Absent,
    ConnectionState,
    Dimension,
    Event,
    LifecycleStage,
    Listed,
    Listing,
    ListStatus,
    StatusPolled,
    StatusSnapshot,
    Tick,
    WebhookReceived,
    derive_health,
)
from monitor.lifecycle import apply, stage_of

CID = "0b5c3a1e-0000-4000-8000-000000000002"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REASONS = [None, "SHOP_IS_LOCKED", "FAILED TO AUTHENTICATE", "SOMETHING_NEW"]
CODES = [
    "INITIAL_UPDATE",
    "HISTORICAL_UPDATE",
    "CONNECTION_NEEDS_UPDATE",
    "CONNECTION_UPDATED",
    "CONNECTION_DISABLED",
    "INCREMENTAL_SYNC_COMPLETED",
    "ORDER_CREATED",
    "CONNECTION_ERROR",
]
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


@hs.composite
def statuses(draw: hs.DrawFn, *, is_healthy: bool | None = None) -> StatusSnapshot:
    ready = draw(hs.booleans())
    disabled = draw(hs.booleans())
    return StatusSnapshot(
        connection_id=CID,
        platform="XERO",
        is_ready=ready,
        historical_sync_completed=ready and draw(hs.booleans()),
        needs_update=draw(hs.booleans()),
        is_disabled=disabled,
        is_healthy=draw(hs.booleans()) if is_healthy is None else is_healthy,
        disabled_reason=draw(hs.sampled_from(REASONS)) if disabled else None,
        created_at=T0 - timedelta(days=1),
        num_batches_completed=draw(hs.none() | hs.integers(0, 3)),
        synced_count=draw(hs.none() | hs.integers(0, 100)),
    )


def webhooks(status: hs.SearchStrategy[StatusSnapshot | None]) -> hs.SearchStrategy[WebhookReceived]:
    return hs.builds(
        WebhookReceived,
        code=hs.sampled_from(CODES),
        update_url=hs.none() | hs.just("https://link.rutterapi.com/connection/x"),
        disabled_reason=hs.sampled_from(REASONS),
        status=status,
    )


listings = hs.builds(
    lambda status: Listed(Listing(id=CID, access_token="tok", platform="XERO", status=status)),
    hs.sampled_from([*(s.value for s in ListStatus), None, "brand_new"]),
)


def run_all(events: list[Event]) -> ConnectionState | None:
    state: ConnectionState | None = None
    for i, event in enumerate(events):
        state = apply(state, event, T0 + timedelta(minutes=i), connection_id=CID).state
    return state


def expected_stage(seed: Event | None, stream: list[WebhookReceived], final: StatusSnapshot) -> LifecycleStage:
    """The furthest stage really reached, where a stage guessed without any status does not count."""
    reached = [stage_of(final)]
    seen_status = isinstance(seed, StatusPolled) or (seed is None and stream[0].status is not None)
    if isinstance(seed, StatusPolled):
        reached.append(stage_of(seed.status))
    # Before any status, only a not_ready listing gives a real initial_sync for a ready webhook to leave.
    guessed_past_initial = not isinstance(seed, Listed) or seed.listing.status != ListStatus.NOT_READY
    for event in stream:
        if event.status is not None:
            seen_status = True
        elif event.code in {"INITIAL_UPDATE", "HISTORICAL_UPDATE"} and (seen_status or not guessed_past_initial):
            reached.append(LifecycleStage.HISTORICAL_SYNC)
    return max(reached, key=STAGE_RANK.__getitem__)


@hs.composite
def convergence_cases(
    draw: hs.DrawFn,
) -> tuple[Event | None, list[WebhookReceived], StatusSnapshot]:
    final = draw(statuses(is_healthy=draw(hs.booleans())))
    seed = draw(hs.none() | listings | hs.builds(StatusPolled, statuses()))
    # The connection's webhooks, each processed without a status or with the authoritative one attached.
    delivered = draw(hs.lists(webhooks(hs.sampled_from([None, final])), min_size=1, max_size=6))
    duplicates = draw(hs.lists(hs.sampled_from(delivered), max_size=6))
    stream = draw(hs.permutations(delivered + duplicates))
    return seed, stream, final


@PROPERTY_SETTINGS
@given(convergence_cases())
def test_webhooks_in_any_order_converge_to_the_authoritative_status(
    case: tuple[Event | None, list[WebhookReceived], StatusSnapshot],
) -> None:
    """Any permutation and duplication of webhooks, then the authoritative status, yields its state."""
    seed, stream, final = case
    events: list[Event] = [*([seed] if seed is not None else []), *stream, StatusPolled(final)]
    state = run_all(events)
    assert state is not None
    assert state.lifecycle_stage == expected_stage(seed, stream, final)
    assert (state.is_disabled, state.needs_update, state.is_unhealthy) == (
        final.is_disabled,
        final.needs_update,
        not final.is_healthy,
    )
    assert state.health == derive_health(
        is_disabled=final.is_disabled, needs_update=final.needs_update, is_unhealthy=not final.is_healthy
    )
    assert state.disabled_reason == (final.disabled_reason if final.is_disabled else None)
    assert state.platform == "XERO"


any_event: hs.SearchStrategy[Event] = hs.one_of(
    webhooks(hs.none() | statuses()),
    hs.builds(StatusPolled, statuses()),
    listings,
    hs.just(Absent()),
    hs.just(Tick()),
)


@PROPERTY_SETTINGS
@given(hs.lists(hs.tuples(any_event, hs.integers(0, 40)), min_size=1, max_size=25))
def test_invariants_along_any_sequence(steps: list[tuple[Event, int]]) -> None:
    """Health always equals derive_health(flags), no transition is a no-op, and stages only move forward."""
    state: ConnectionState | None = None
    now = T0
    for event, minutes in steps:
        now += timedelta(minutes=minutes)
        out = apply(state, event, now, connection_id=CID)
        new = out.state
        if new is None:
            assert state is None
            continue
        assert new.health == derive_health(
            is_disabled=new.is_disabled, needs_update=new.needs_update, is_unhealthy=new.is_unhealthy
        )
        assert new.is_disabled or new.disabled_reason is None
        assert all(t.from_ != t.to for t in out.transitions)
        assert len({p.code for p in new.pending_webhooks}) == len(new.pending_webhooks)
        stage_moves = [t for t in out.transitions if t.dimension == Dimension.LIFECYCLE_STAGE]
        if state is not None:
            before, after = STAGE_RANK[state.lifecycle_stage], STAGE_RANK[new.lifecycle_stage]
            assert all(STAGE_RANK[LifecycleStage(t.from_)] < STAGE_RANK[LifecycleStage(t.to)] for t in stage_moves)
            if after < before:
                # Only a guess made before any status is corrected, silently, by the first status.
                assert state.last_status_at is None
                assert new.last_status_at == now
                assert not stage_moves
            if state.last_status_at is not None:
                assert after >= before
            assert new.stage_since == (now if stage_moves else state.stage_since)
            assert new.health_since == (now if new.health != state.health else state.health_since)
        else:
            assert not out.transitions
        state = new


@PROPERTY_SETTINGS
@given(hs.lists(any_event, max_size=8), any_event)
def test_an_event_applied_twice_changes_nothing_the_second_time(history: list[Event], event: Event) -> None:
    """After any history, applying the same event twice at one instant changes nothing the second time."""
    state = run_all(history)
    now = T0 + timedelta(minutes=len(history))
    first = apply(state, event, now, connection_id=CID)
    second = apply(first.state, event, now, connection_id=CID)
    if isinstance(event, Absent) and first.state is not None:
        return  # Absent counts inventories by design
    assert second.state == first.state
    assert not second.changed
    assert not second.transitions
    assert not second.missed_webhooks

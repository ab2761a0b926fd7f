"""The status-refresh policy: what is due when, and in which order when the budget cannot serve everyone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.domain import ConnectionState, Health, LifecycleStage
from monitor.poller import PollSettings, _newly_needs_action, iter_due, most_due
from tests.states import connection_state, status_snapshot

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SETTINGS = PollSettings(inventory_interval=timedelta(minutes=5), status_interval=timedelta(hours=1), rate_limit=100)
LONG_AGO = NOW - timedelta(days=3)


def conn(cid: str, **changes: object) -> ConnectionState:
    base: dict[str, object] = {"access_token": f"tok-{cid}", "last_status_at": NOW - timedelta(minutes=10)}
    return connection_state(cid, LONG_AGO, **(base | changes))


def due_ids(states: list[ConnectionState], urgent: set[str] | None = None) -> list[str]:
    return [item[3].id for item in sorted(iter_due(states, urgent or set(), NOW, SETTINGS))]


def test_nothing_is_refreshed_before_its_status_is_a_status_interval_old() -> None:
    """Whatever its stage or health, a connection polled 59 minutes ago is not due; one polled an hour ago is."""
    fresh = NOW - timedelta(minutes=59)
    stale = NOW - timedelta(hours=1)
    kinds: dict[str, dict[str, object]] = {
        "initial": {"lifecycle_stage": LifecycleStage.INITIAL_SYNC},
        "historical": {"lifecycle_stage": LifecycleStage.HISTORICAL_SYNC},
        "unhealthy": {"health": Health.UNHEALTHY, "is_unhealthy": True},
        "changed": {"updated_at": NOW - timedelta(minutes=30)},
        "ongoing": {},
    }
    assert due_ids([conn(k, last_status_at=fresh, **v) for k, v in kinds.items()]) == []
    assert sorted(due_ids([conn(k, last_status_at=stale, **v) for k, v in kinds.items()])) == sorted(kinds)


def test_due_connections_come_most_urgent_first_then_most_overdue() -> None:
    """Urgent and never-polled first, then in-progress, unhealthy, recently changed, healthy ongoing."""
    hour_ago = NOW - timedelta(hours=1, minutes=1)
    states = [
        conn("ongoing-old", last_status_at=NOW - timedelta(hours=5)),
        conn("ongoing", last_status_at=hour_ago),
        conn("changed", last_status_at=hour_ago, updated_at=NOW - timedelta(minutes=30)),
        conn("unhealthy", last_status_at=hour_ago, health=Health.UNHEALTHY, is_unhealthy=True),
        conn("historical", last_status_at=hour_ago, lifecycle_stage=LifecycleStage.HISTORICAL_SYNC),
        conn("never", last_status_at=None),
        conn("urgent", last_status_at=NOW - timedelta(seconds=5)),
    ]
    assert due_ids(states, {"urgent"}) == [
        "never",
        "urgent",
        "historical",
        "unhealthy",
        "changed",
        "ongoing-old",
        "ongoing",
    ]


def test_deleted_and_tokenless_connections_are_never_due() -> None:
    """Without a token there is nothing to ask; a deleted connection is not asked about."""
    assert due_ids([conn("gone", last_status_at=None, deleted_at=NOW), conn("anon", access_token=None)]) == []


async def test_most_due_keeps_the_best_within_the_limit_and_reports_the_worst_lag() -> None:
    """Across scan slices, the `limit` most due come back in order and the lag is the largest overdue."""
    states = [conn(f"c{n:05}", last_status_at=NOW - timedelta(hours=1, seconds=n)) for n in range(12_000)]
    by_id = {s.id: s for s in states}
    chosen, lag = await most_due(list(by_id), by_id.get, set(), NOW, SETTINGS, limit=3)
    assert [s.id for s in chosen] == ["c11999", "c11998", "c11997"]
    assert lag == 11_999.0


async def test_most_due_skips_ids_gone_since_the_snapshot() -> None:
    """An id whose connection left the fleet during the scan is skipped, not looked up into an error."""
    states = [conn(f"c{n:05}", last_status_at=None) for n in range(3)]
    by_id = {s.id: s for s in states}
    ids = list(by_id)
    del by_id["c00000"]
    chosen, _ = await most_due(ids, by_id.get, set(), NOW, SETTINGS, limit=5)
    assert [s.id for s in chosen] == ["c00001", "c00002"]


@pytest.mark.parametrize(
    ("changes", "fetch"),
    [
        ({}, True),  # healthy until this status: it becomes disabled now
        ({"is_disabled": True, "health_since": NOW}, True),  # seen becoming disabled, from its webhook alone
        ({"is_disabled": True}, False),  # disabled since first sight (the listing said so): keeps the listing's name
        ({"is_disabled": True, "health_since": NOW, "disabled_reason": "SHOP_IS_LOCKED"}, False),  # its fetch came
        ({"is_disabled": True, "health_since": NOW, "store_name": "Corner Shop"}, False),  # a name known already
    ],
)
def test_a_refresh_fetches_the_store_name_of_a_disable_only_once_and_only_where_it_is_news(
    changes: dict[str, object], fetch: bool
) -> None:
    """The store name an alert is named and routed by is fetched with the status that shows the disable first: a
    disable the monitor saw only through its webhook counts, one disabled since first sight does not (bench/economy.py:
    those were 4% of an hour's requests)."""
    state = conn("c1", health=Health.DISABLED, **changes) if changes else conn("c1")
    status = status_snapshot("c1", is_disabled=True, disabled_reason="SHOP_IS_LOCKED")
    assert _newly_needs_action(state, status) is fetch

"""The in-memory deduplication index: the window, the lifecycle rule, the entity cap, pruning, the seed after a
restart, and entries that the garbage collector does not track."""

from __future__ import annotations

import gc
import hashlib
from datetime import UTC, datetime, timedelta

from monitor.ingest import DedupeIndex
from monitor.store import DedupeRow, InboxItem

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)


def item(body: str, *, at: datetime = T0, cid: str | None = "conn-1", lifecycle: bool = False) -> InboxItem:
    return InboxItem(
        received_at=at,
        code="CONNECTION_DISABLED" if lifecycle else "ORDER_CREATED",
        connection_id=cid,
        body_hash=hashlib.sha256(body.encode()).hexdigest(),
        body=body,
        access_token=None,
        is_lifecycle=lifecycle,
    )


def test_a_body_is_a_duplicate_within_the_window_to_the_microsecond() -> None:
    index = DedupeIndex(WINDOW)
    index.record(7, item("a"))
    assert index.is_duplicate(item("a"), T0 + WINDOW)
    assert not index.is_duplicate(item("a"), T0 + WINDOW + timedelta(microseconds=1))
    assert not index.is_duplicate(item("b"), T0)


def test_a_lifecycle_event_accepted_since_makes_the_same_body_new_again() -> None:
    index = DedupeIndex(WINDOW)
    index.record(5, item("disable", lifecycle=True))
    assert index.is_duplicate(item("disable", lifecycle=True), T0)
    index.record(6, item("reconnect", lifecycle=True))
    assert not index.is_duplicate(item("disable", lifecycle=True), T0)
    index.record(6, item("entity-on-other", cid="conn-2"))
    assert index.is_duplicate(item("entity-on-other", cid="conn-2"), T0)  # another connection's rule


def test_the_entity_cap_forgets_the_oldest_entity_bodies_only() -> None:
    index = DedupeIndex(WINDOW, entity_cap=2)
    index.record(1, item("life", lifecycle=True))
    for n, body in enumerate(("e1", "e2", "e3"), start=2):
        index.record(n, item(body, cid="conn-9"))
    assert not index.is_duplicate(item("e1", cid="conn-9"), T0)
    assert index.is_duplicate(item("e2", cid="conn-9"), T0)
    assert index.is_duplicate(item("e3", cid="conn-9"), T0)
    assert index.is_duplicate(item("life", lifecycle=True), T0)


def test_prune_forgets_bodies_older_than_the_window() -> None:
    index = DedupeIndex(WINDOW)
    index.record(1, item("old", at=T0))
    index.record(2, item("new", at=T0 + timedelta(minutes=30)))
    index.prune(T0 + WINDOW + timedelta(minutes=1))
    later = T0 + timedelta(minutes=1)  # `now` of the check: only pruning can have forgotten "old"
    assert not index.is_duplicate(item("old"), later)
    assert index.is_duplicate(item("new"), later)


def test_the_seed_after_a_restart_restores_ids_times_and_the_lifecycle_rule() -> None:
    index = DedupeIndex(WINDOW)
    first, second = item("disable", lifecycle=True), item("enable", lifecycle=True)
    index.seed(
        [
            DedupeRow(3, "conn-1", first.body_hash, True, T0),
            DedupeRow(4, "conn-1", second.body_hash, True, T0 + timedelta(seconds=1)),
            DedupeRow(5, None, "not-a-sha256", False, T0),
        ]
    )
    assert not index.is_duplicate(first, T0)  # a lifecycle event (id 4) came after it
    assert index.is_duplicate(second, T0 + timedelta(seconds=1))
    odd = InboxItem(T0, "OTHER", None, "not-a-sha256", "{}", None, False)
    assert index.is_duplicate(odd, T0 + WINDOW)
    assert not index.is_duplicate(odd, T0 + WINDOW + timedelta(seconds=1))


def test_large_ids_and_times_survive_the_packing() -> None:
    index = DedupeIndex(timedelta(days=365 * 100))
    far = datetime(2199, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    index.record(2**40, item("big", at=far, lifecycle=True))
    index.record(2**40 + 1, item("after", at=far, cid="conn-2", lifecycle=True))
    assert index.is_duplicate(item("big", lifecycle=True), far)
    assert not index.is_duplicate(item("big", lifecycle=True), far + timedelta(days=365 * 100, microseconds=1))


def test_entries_are_not_tracked_by_the_garbage_collector() -> None:
    index = DedupeIndex(WINDOW)
    for n in range(100):
        index.record(n + 1, item(f"body-{n}", lifecycle=n % 2 == 0))
    tables = [index._entity, index._lifecycle]  # what the collector would walk
    for table in tables:
        assert table
        assert not any(gc.is_tracked(key) or gc.is_tracked(entry) for key, entry in table.items())


def test_every_digit_of_the_hash_counts() -> None:
    index = DedupeIndex(WINDOW)
    first = InboxItem(T0, "ORDER_CREATED", "conn-1", f"{1:064x}", "{}", None, False)
    index.record(1, first)
    assert index.is_duplicate(first, T0)
    assert not index.is_duplicate(InboxItem(T0, "ORDER_CREATED", "conn-1", f"{2:064x}", "{}", None, False), T0)

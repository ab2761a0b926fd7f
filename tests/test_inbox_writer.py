"""Group commit with several commits in flight: the verdicts are the ones one commit at a time would give, and a
webhook waits for its own commit only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from monitor.ingest import DedupeIndex, InboxWriter, Verdict
from monitor.metrics import Metrics
from monitor.store import InboxItem, Store, StoreError

T0 = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)


class HeldStore:
    """An inbox whose commits wait until the test lets each one through, in order."""

    def __init__(self) -> None:
        self.commits: list[list[InboxItem]] = []
        self.gates: list[asyncio.Future[None]] = []
        self.next_id = 100
        self.fail_next = False

    async def insert_inbox(self, items: Sequence[InboxItem]) -> list[int]:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.commits.append(list(items))
        await gate
        if self.fail_next:
            self.fail_next = False
            raise StoreError("store insert inbox failed: OperationalError: disk I/O error")
        ids = list(range(self.next_id, self.next_id + len(items)))
        self.next_id += len(items)
        return ids

    def release(self, index: int) -> None:
        self.gates[index].set_result(None)


def entity(n: int, cid: str = "c1") -> InboxItem:
    return InboxItem(T0, "ORDER_CREATED", cid, f"{n:064x}", f'{{"n":{n}}}', None, False)


def disable(n: int, cid: str = "c1") -> InboxItem:
    return InboxItem(T0, "CONNECTION_DISABLED", cid, f"{n:064x}", f'{{"n":{n}}}', None, True)


async def until(condition: object, what: str) -> None:
    """Let the loop turn until `condition()` holds (bounded: no time passes in these tests)."""
    for _ in range(1000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


Held = tuple[HeldStore, InboxWriter, list[int], "asyncio.Task[None]"]


@pytest.fixture
async def held() -> AsyncIterator[Held]:
    """A writer running over a HeldStore; at the end it must stop within 5 s of `close()`."""
    store = HeldStore()
    landed: list[int] = []
    writer = InboxWriter(
        cast(Store, store),
        DedupeIndex(timedelta(hours=1)),
        Metrics(CollectorRegistry()),
        on_commit=lambda: landed.append(len(store.commits)),
        max_in_flight=2,
    )
    runner = asyncio.create_task(writer.run())
    yield store, writer, landed, runner
    writer.close()
    await asyncio.wait_for(runner, 5)


async def test_a_webhook_arriving_during_a_commit_goes_out_in_the_next_one_at_once(
    held: Held,
) -> None:
    store, writer, _, _ = held
    first = asyncio.create_task(writer.submit(entity(1)))
    await until(lambda: len(store.commits) == 1, "the first commit starts")
    second = asyncio.create_task(writer.submit(entity(2)))
    await until(lambda: len(store.commits) == 2, "the second commit starts while the first is in flight")
    third = asyncio.create_task(writer.submit(entity(3)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(store.commits) == 2, "no more than max_in_flight commits at once"
    store.release(0)
    assert await first is Verdict.ACCEPTED
    await until(lambda: len(store.commits) == 3, "a freed slot takes what waited")
    assert not second.done()
    store.release(1)
    store.release(2)
    assert [await second, await third] == [Verdict.ACCEPTED, Verdict.ACCEPTED]


async def test_a_body_in_flight_is_a_duplicate_unless_a_lifecycle_event_came_since(
    held: Held,
) -> None:
    store, writer, _, _ = held
    original = asyncio.create_task(writer.submit(entity(1)))
    await until(lambda: len(store.commits) == 1, "the first commit starts")
    assert await writer.submit(entity(1)) is Verdict.DUPLICATE  # answered while the original is still in flight
    disabled = asyncio.create_task(writer.submit(disable(9)))
    await until(lambda: len(store.commits) == 2, "the disable's commit starts")
    again = asyncio.create_task(writer.submit(entity(1)))  # the same body after a lifecycle event: a new fact
    for index in range(3):
        await until(lambda: len(store.commits) > index, f"commit {index} starts")  # noqa: B023
        store.release(index)
    assert [await original, await disabled, await again] == [Verdict.ACCEPTED] * 3
    assert [len(c) for c in store.commits] == [1, 1, 1]
    assert await writer.submit(entity(1)) is Verdict.DUPLICATE  # now from the index: stored, nothing since


async def test_a_failed_commit_fails_its_webhooks_and_the_next_copy_is_stored(
    held: Held,
) -> None:
    store, writer, landed, _ = held
    store.fail_next = True
    doomed = asyncio.create_task(writer.submit(entity(1)))
    await until(lambda: len(store.commits) == 1, "the commit starts")
    store.release(0)
    with pytest.raises(StoreError):
        await doomed
    assert landed == []
    retry = asyncio.create_task(writer.submit(entity(1)))  # the sender's retry: not a duplicate of a lost body
    await until(lambda: len(store.commits) == 2, "the retry's commit starts")
    store.release(1)
    assert await retry is Verdict.ACCEPTED
    assert landed == [2]


async def test_close_returns_after_the_commits_in_flight_have_ended(
    held: Held,
) -> None:
    store, writer, _, runner = held
    pending = [asyncio.create_task(writer.submit(entity(n))) for n in range(3)]
    await until(lambda: len(store.commits) == 1, "a commit starts")
    writer.close()
    for _ in range(50):
        await asyncio.sleep(0)
    assert not runner.done()
    store.release(0)
    assert [await p for p in pending] == [Verdict.ACCEPTED] * 3
    await asyncio.wait_for(runner, 5)

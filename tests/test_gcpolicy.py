"""The daemon's garbage-collection schedule: no automatic full collections, and a scheduled one on the daemon's
clock that frees the cyclic garbage that grew old meanwhile."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from monitor import gcpolicy
from monitor.clock import FakeClock


@pytest.fixture
def deferred() -> Iterator[tuple[int, int, int]]:
    before = gcpolicy.defer_full_collections()
    try:
        yield before
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()  # the scheduled collections freeze their survivors: give them back to the other tests


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_young_collections_stay_automatic_and_full_ones_stop(deferred: tuple[int, int, int]) -> None:
    assert gc.get_threshold()[:2] == deferred[:2]
    generations: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        keep = [[n] for n in range(deferred[0] * deferred[1] * deferred[2] * 3)]  # enough for several full ones
    finally:
        gc.callbacks.remove(seen)
    assert len(keep) > 0
    assert 0 in generations
    assert 1 in generations
    assert 2 not in generations


async def test_the_scheduled_collection_frees_old_cyclic_garbage_on_the_clock(deferred: tuple[int, int, int]) -> None:
    clock = FakeClock()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.collect(1)  # the cycle is old now: only a full collection reaches it
    del cycle
    gc.collect(1)
    assert gone() is not None
    calls: list[int] = []

    def collect() -> int:
        calls.append(1)
        return gc.collect()

    task = asyncio.create_task(gcpolicy.collect_periodically(clock, interval=120.0, collect=collect))
    try:
        await asyncio.sleep(0)  # the task starts and sleeps on the clock
        assert clock.waiting == 1
        await clock.advance(119.0)
        assert calls == []
        assert gone() is not None
        await clock.advance(1.0)
        assert calls == [1]
        assert gone() is None
        await clock.advance(240.0)
        assert len(calls) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_survivors_are_frozen_and_the_whole_heap_is_collected_every_thaw_every_rounds(
    deferred: tuple[int, int, int],
) -> None:
    """A round freezes what survives it, so the next one does not walk it again; a cycle that was alive then and
    became garbage later waits for the round that unfreezes the whole heap (here every 3rd), and is freed there."""
    clock = FakeClock()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.unfreeze()
    task = asyncio.create_task(gcpolicy.collect_periodically(clock, interval=120.0, thaw_every=3))
    try:
        await asyncio.sleep(0)
        await clock.advance(120.0)  # round 1: the cycle is alive, so it survives and is frozen
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        del cycle
        await clock.advance(120.0)  # round 2 walks only what grew old since round 1
        assert gone() is not None
        assert gc.get_freeze_count() >= frozen
        await clock.advance(120.0)  # round 3: the whole heap
        assert gone() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

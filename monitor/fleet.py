"""The in-memory view of every connection, kept beside the store so that a scrape, the API's stalled filter and the
poller never scan the database. Aggregates are maintained on every update, so a snapshot costs O(series), not
O(connections): the oldest stage entry of each (platform, stage) is the top of a lazy min-heap whose outdated entries
are dropped when they reach the top (bench/scale.py: taking the min of 100,000 entries was a fifth of a scrape)."""

from __future__ import annotations

import contextlib
import gc
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from monitor.domain import ConnectionState, Health, LifecycleStage

Cell = tuple[str, LifecycleStage, Health]
StageKey = tuple[str, LifecycleStage]


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """What the gauges show: counts per (platform, stage, health) and when the oldest member entered each stage."""

    platforms: frozenset[str]
    counts: dict[Cell, int]
    oldest_stage_entry: dict[tuple[str, LifecycleStage], datetime]
    size: int


class Fleet:
    """Every known connection by id (deleted ones included), with per-cell counts of the live ones."""

    def __init__(self, states: Iterable[ConnectionState] = ()) -> None:
        self._by_id: dict[str, ConnectionState] = {}
        self._counts: Counter[Cell] = Counter()
        self._stage_entry: dict[StageKey, dict[str, datetime]] = {}
        self._oldest: dict[StageKey, list[tuple[datetime, str]]] = {}  # lazy min-heaps of (stage_since, id)
        for state in states:
            self.put(state)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._by_id

    def get(self, connection_id: str) -> ConnectionState | None:
        return self._by_id.get(connection_id)

    def live(self) -> Iterator[ConnectionState]:
        """Connections not deleted."""
        return (s for s in list(self._by_id.values()) if s.deleted_at is None)

    def live_ids(self) -> tuple[str, ...]:
        """The ids of the connections not deleted: a snapshot that later changes to the fleet leave alone."""
        return tuple(cid for cid, s in self._by_id.items() if s.deleted_at is None)

    def put(self, state: ConnectionState) -> None:
        """Insert or replace one connection and keep the aggregates right."""
        old = self._by_id.get(state.id)
        if old is not None:
            self._forget(old)
        self._by_id[state.id] = state
        if state.deleted_at is None:
            self._counts[(state.platform, state.lifecycle_stage, state.health)] += 1
            key = (state.platform, state.lifecycle_stage)
            members = self._stage_entry.setdefault(key, {})
            members[state.id] = state.stage_since
            heap = self._oldest.setdefault(key, [])
            if not heap or not _same_entry(old, state):  # an unchanged entry is in the heap already
                heapq.heappush(heap, (state.stage_since, state.id))
                if len(heap) > 2 * len(members) + 64:  # too many outdated entries: rebuild from the members
                    heap[:] = [(since, cid) for cid, since in members.items()]
                    heapq.heapify(heap)

    def _forget(self, state: ConnectionState) -> None:
        if state.deleted_at is not None:
            return
        cell = (state.platform, state.lifecycle_stage, state.health)
        self._counts[cell] -= 1
        if self._counts[cell] <= 0:
            del self._counts[cell]
        key = (state.platform, state.lifecycle_stage)
        members = self._stage_entry.get(key)
        if members is not None:
            members.pop(state.id, None)
            if not members:
                del self._stage_entry[key]
                self._oldest.pop(key, None)

    def snapshot(self) -> FleetSnapshot:
        """A consistent copy of the aggregates for one scrape."""
        oldest: dict[StageKey, datetime] = {}
        for key, members in self._stage_entry.items():
            heap = self._oldest[key]
            while heap and members.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)  # that connection left the stage, or entered it again later
            if heap:
                oldest[key] = heap[0][0]
        platforms = frozenset(cell[0] for cell in self._counts)
        return FleetSnapshot(
            platforms=platforms,
            counts=dict(self._counts),
            oldest_stage_entry=oldest,
            size=sum(self._counts.values()),
        )


def _same_entry(old: ConnectionState | None, new: ConnectionState) -> bool:
    """Did `old` already have `new`'s entry in the stage heaps (live, same platform, stage and stage_since)?"""
    return (
        old is not None
        and old.deleted_at is None
        and old.platform == new.platform
        and old.lifecycle_stage == new.lifecycle_stage
        and old.stage_since == new.stage_since
    )


@contextlib.contextmanager
def bulk_load() -> Iterator[None]:
    """Load a whole fleet with the cyclic garbage collector paused, then settle it. Each full collection during a
    100,000-state load walked every state loaded so far: 0.6-1.0 s of a 2 s restart load, for nothing, since
    states hold no cycles. Reference counting still frees what the load drops."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
    settle_heap()


def settle_heap() -> None:
    """Move the long-lived fleet out of the cyclic garbage collector's reach. At 100,000 connections a full
    collection walked ~1 M objects for 170-270 ms, every few seconds under webhook load (bench/README.md). States are
    acyclic, so reference counting still frees the ones replaced later."""
    gc.collect()
    gc.freeze()

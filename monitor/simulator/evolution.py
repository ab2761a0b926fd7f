"""How the fleet changes by itself: each connection has one planned next action on a timeline.

Every action runs at its planned time (not when step() happens to be called), so a run depends only on the
seed and on the control calls made, not on how often the simulator is stepped. Durations are realistic and
scaled by `time_scale`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from monitor.simulator.draws import log_uniform
from monitor.simulator.platforms import DISABLE_REASONS, ENTITY_CODES, category, profile

if TYPE_CHECKING:
    from monitor.simulator.connection import SimConnection
    from monitor.simulator.model import FleetModel

log = structlog.get_logger()

_MIN = 60.0
_HOUR = 3600.0
_DAY = 86400.0

# What an episode turns into, and how likely, once a healthy ongoing connection is hit by one.
_EPISODES: tuple[tuple[str, float], ...] = (
    ("unhealthy", 0.45),
    ("needs_update", 0.25),
    ("disable", 0.20),
    ("delete", 0.10),
)
_UNHEALTHY_OUTCOME_REASONS = (
    "REQUEST_TIMEOUT",
    "SHOP_IS_UNAVAILABLE",
    "TUNNEL_ERROR",
    "FAILED TO AUTHENTICATE",
)


class Action(StrEnum):
    READY = "ready"
    BATCH = "batch"
    SYNC = "sync"
    RECOVER = "recover"
    RECONNECT = "reconnect"
    DELETE = "delete"
    ARRIVAL = "arrival"


class Evolution:
    """The timeline of planned actions, and what each does when its time comes."""

    def __init__(self, model: FleetModel, rng: random.Random) -> None:
        self._model = model
        self._rng = rng
        # (due as POSIX seconds for cheap ordering, tie-break, due, connection id, its generation, action)
        self._heap: list[tuple[float, int, datetime, str, int, Action]] = []
        self._seq = itertools.count()

    @property
    def pending(self) -> int:
        """Planned actions on the timeline (including ones voided by a later change)."""
        return len(self._heap)

    def start(self, now: datetime) -> None:
        """Begin the arrival of new connections."""
        if self._model.config.evolve and self._model.config.arrivals_per_hour > 0:
            self._push(now + self._next_arrival(), "", 0, Action.ARRIVAL)

    def plan(self, conn: SimConnection, base: datetime) -> None:
        """Replace the connection's planned action by the one its current state calls for, from `base` on."""
        conn.generation += 1
        if not conn.evolve or conn.deleted:
            return
        rng = self._rng
        if conn.disabled:
            roll = rng.random()
            if roll < 0.5:
                self._after(conn, base, (15 * _MIN, 6 * _HOUR), Action.RECONNECT)
            elif roll < 0.7:
                self._after(conn, base, (_DAY, 7 * _DAY), Action.DELETE)
        elif conn.needs_update:
            roll = rng.random()
            if roll < 0.7:
                self._after(conn, base, (10 * _MIN, 4 * _HOUR), Action.RECONNECT)
            elif roll < 0.85:
                self._after(conn, base, (_DAY, 7 * _DAY), Action.DELETE)
        elif not conn.is_healthy:
            self._after(conn, base, (20 * _MIN, 3 * _HOUR), Action.RECOVER)
        elif not conn.is_ready:
            self._push(max(base, conn.ready_due or base), conn.id, conn.generation, Action.READY)
        elif conn.history_done < conn.history_batches:
            self._after(conn, base, profile(conn.platform).batch, Action.BATCH)
        else:
            period = self._model.scaled(self._model.config.sync_period_minutes * 60.0)
            due = (conn.last_sync_completed_at or base) + period
            if due <= base:
                due = base + period * rng.uniform(0.05, 1.0)
            self._push(due, conn.id, conn.generation, Action.SYNC)

    def run_until(self, now: datetime) -> None:
        """Run every action planned up to `now`, in time order."""
        heap = self._heap
        limit = now.timestamp()
        while heap and heap[0][0] <= limit:
            _, _, due, conn_id, generation, action = heapq.heappop(heap)
            if action is Action.ARRIVAL:
                self._arrive(due)
                continue
            conn = self._model.find(conn_id)
            if conn is None or conn.generation != generation:
                continue
            self._run(conn, action, due)

    def _run(self, conn: SimConnection, action: Action, at: datetime) -> None:
        model = self._model
        rng = self._rng
        if action is Action.READY:
            model.apply_ready(conn, at)
        elif action is Action.BATCH:
            model.apply_batch(conn, at)
        elif action is Action.RECONNECT:
            model.apply_reconnect(conn, at)
        elif action is Action.DELETE:
            model.apply_delete(conn, at)
            log.debug("sim connection deleted", connection_id=conn.id)
            return
        elif action is Action.RECOVER:
            if rng.random() < 0.75:
                model.apply_unhealthy(conn, False, at)
            else:
                model.apply_disable(conn, rng.choice(_UNHEALTHY_OUTCOME_REASONS), at)
        elif action is Action.SYNC:
            model.apply_sync(conn, at)
            if rng.random() < 0.6:
                codes = ENTITY_CODES[category(conn.platform)]
                for _ in range(rng.randint(1, 3)):
                    model.apply_entity(conn, rng.choice(codes), at)
            if rng.random() < model.config.incident_rate and self._episode(conn, at):
                return
        self.plan(conn, at)

    def _episode(self, conn: SimConnection, at: datetime) -> bool:
        """Something goes wrong with a healthy ongoing connection; True when it is gone."""
        kinds = tuple(kind for kind, _ in _EPISODES)
        weights = tuple(weight for _, weight in _EPISODES)
        kind = self._rng.choices(kinds, weights)[0]
        model = self._model
        if kind == "unhealthy":
            model.apply_unhealthy(conn, True, at)
        elif kind == "needs_update":
            model.apply_needs_update(conn, at)
        elif kind == "disable":
            model.apply_disable(conn, self._rng.choice(DISABLE_REASONS), at)
        else:
            model.apply_delete(conn, at)
            return True
        return False

    def _arrive(self, at: datetime) -> None:
        rng = self._rng
        config = self._model.config
        platform = rng.choice(config.platforms)
        batches = rng.choices((0, 1, 2, 3), (55, 20, 15, 10))[0]
        conn = self._model.create(platform, batches=batches, created_at=at)
        log.debug("sim connection created", connection_id=conn.id, platform=platform)
        self._push(at + self._next_arrival(), "", 0, Action.ARRIVAL)

    def _next_arrival(self) -> timedelta:
        rate_per_second = self._model.config.arrivals_per_hour / _HOUR
        return self._model.scaled(self._rng.expovariate(rate_per_second))

    def _after(self, conn: SimConnection, base: datetime, bounds: tuple[float, float], action: Action) -> None:
        seconds = log_uniform(self._rng, bounds)
        self._push(base + self._model.scaled(seconds), conn.id, conn.generation, action)

    def _push(self, due: datetime, conn_id: str, generation: int, action: Action) -> None:
        heapq.heappush(self._heap, (due.timestamp(), next(self._seq), due, conn_id, generation, action))

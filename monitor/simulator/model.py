"""The simulated fleet: connections, the changes Rutter would announce, and the webhooks it queues for them.

Pure logic on an injected Clock and seeded random generators: no I/O. Control methods are what tests and
scenarios call; each change Rutter would announce queues its webhook unless `webhook=False` (a dropped one).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from monitor.clock import Clock
from monitor.domain import ListStatus, is_entity_code
from monitor.simulator import views
from monitor.simulator.config import InitialMix, SimulatorConfig
from monitor.simulator.connection import (
    ALL_LIST_STATUSES,
    DEFAULT_LIST_STATUSES,
    BatchPlan,
    OutgoingWebhook,
    SimConnection,
    SimError,
    default_plan,
)
from monitor.simulator.draws import log_uniform, new_uuid, pick
from monitor.simulator.evolution import Evolution
from monitor.simulator.platforms import DISABLE_REASONS, profile, store_name

__all__ = [
    "ALL_LIST_STATUSES",
    "DEFAULT_LIST_STATUSES",
    "BatchPlan",
    "FleetModel",
    "OutgoingWebhook",
    "SimConnection",
    "SimError",
]

_MIX: tuple[tuple[str, float], ...] = (
    ("ongoing", 0.72),
    ("initial", 0.08),
    ("historical", 0.07),
    ("unhealthy", 0.06),
    ("needs_update", 0.03),
    ("disabled", 0.04),
)
_MIX_KINDS = tuple(kind for kind, _ in _MIX)
_MIX_CUMULATIVE = tuple(itertools.accumulate(weight for _, weight in _MIX))
_BATCH_COUNTS = (0, 1, 2, 3)
_BATCH_CUMULATIVE = tuple(itertools.accumulate((55.0, 20.0, 15.0, 10.0)))


class FleetModel:
    """Every connection of one simulated organization, and the webhooks its changes queue."""

    def __init__(self, config: SimulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._rng = random.Random(f"{config.seed}:fleet")
        self.org_id = new_uuid(self._rng)
        self._live_conns: dict[str, SimConnection] = {}
        self._deleted: dict[str, SimConnection] = {}
        self._by_token: dict[str, SimConnection] = {}
        self._outbox: list[OutgoingWebhook] = []
        self._bodies: dict[frozenset[ListStatus], bytes] = {}
        self._number = 0
        self.version = 0  # bumps whenever a list item changes
        self.evolution = Evolution(self, random.Random(f"{config.seed}:evolve"))
        now = clock.now()
        self.bulk_create(config.connections, config.platforms, mix=config.initial_mix, at=now)
        self.evolution.start(now)

    # ----------------------------------------------------------------------------------------------- reading

    def get(self, connection_id: str) -> SimConnection:
        """The connection, deleted or not; KeyError when the id never existed."""
        conn = self._live_conns.get(connection_id) or self._deleted.get(connection_id)
        if conn is None:
            raise KeyError(connection_id)
        return conn

    def find(self, connection_id: str) -> SimConnection | None:
        """The live connection with this id, or None."""
        return self._live_conns.get(connection_id)

    def by_token(self, access_token: str) -> SimConnection | None:
        """The live connection an access token selects (None for unknown or deleted ones)."""
        return self._by_token.get(access_token)

    def all(self) -> list[SimConnection]:
        """Every live (not deleted) connection, oldest first."""
        return list(self._live_conns.values())

    def __len__(self) -> int:
        return len(self._live_conns)

    def list_body(self, statuses: frozenset[ListStatus]) -> bytes:
        """The `GET /connections` body, cached per fleet version: 100,000 items cost little to serve again."""
        cached = self._bodies.get(statuses)
        if cached is not None:
            return cached
        parts: list[bytes] = []
        for conn in self._live_conns.values():
            if conn.list_status in statuses:
                item = conn.item_json
                if item is None:
                    item = conn.item_json = views.list_item_json(conn)
                parts.append(item)
        body = b'{"connections":[' + b",".join(parts) + b"]}"
        self._bodies[statuses] = body
        return body

    def take_webhooks(self) -> list[OutgoingWebhook]:
        """Hand over the webhooks queued since the last call, in the order Rutter decided them."""
        out, self._outbox = self._outbox, []
        return out

    def advance(self, now: datetime | None = None) -> None:
        """Let the fleet evolve up to `now` (the clock's now by default)."""
        self.evolution.run_until(now or self.clock.now())

    # ------------------------------------------------------------------------------------------- creating

    def create(
        self,
        platform: str,
        *,
        batches: int = 0,
        store_name: str | None = None,
        created_at: datetime | None = None,
        plan: Sequence[BatchPlan] | None = None,
        evolve: bool | None = None,
    ) -> SimConnection:
        """A new connection in initial sync (no webhook: Rutter has no "created" code).

        `batches` history batches follow the initial one; `plan` sets them explicitly; with `evolve=False`
        only the caller moves it on."""
        at = created_at or self.clock.now()
        conn = self._new(platform, at, batches, store_name, plan)
        conn.evolve = self.config.evolve if evolve is None else evolve
        conn.ready_due = at + self.scaled(self.draw_initial_sync(conn))
        self._add(conn)
        self.evolution.plan(conn, at)
        return conn

    def bulk_create(
        self,
        n: int,
        platforms: Iterable[str] | None = None,
        *,
        mix: InitialMix | None = None,
        at: datetime | None = None,
    ) -> list[str]:
        """`n` existing connections, platforms round-robin, spread over the lifecycle by `mix` (no webhooks:
        they existed before anyone listened). 100,000 take about a second."""
        names = tuple(platforms or self.config.platforms)
        mix = mix or self.config.initial_mix
        now = at or self.clock.now()
        ids: list[str] = []
        rng = self._rng
        period = self.scaled(self.config.sync_period_minutes * 60.0)
        evolve = self.config.evolve
        for i in range(n):
            platform = names[i % len(names)]
            kind = "ongoing" if mix is InitialMix.ONGOING else pick(rng, _MIX_KINDS, _MIX_CUMULATIVE)
            batches = rng.randint(1, 3) if kind == "historical" else pick(rng, _BATCH_COUNTS, _BATCH_CUMULATIVE)
            conn = self._new(platform, now, batches, None, None)
            conn.evolve = evolve
            self._place(conn, kind, now, period)
            self._live_conns[conn.id] = conn
            self._by_token[conn.access_token] = conn
            if evolve:
                self.evolution.plan(conn, now)
            ids.append(conn.id)
        self._bodies.clear()
        self.version += 1
        return ids

    def _new(
        self,
        platform: str,
        at: datetime,
        batches: int,
        name: str | None,
        plan: Sequence[BatchPlan] | None,
    ) -> SimConnection:
        rng = self._rng
        self._number += 1
        conn_id = new_uuid(rng)
        token = new_uuid(rng)
        name = name or store_name(rng, self._number)
        return SimConnection(
            id=conn_id,
            access_token=token,
            platform=platform,
            name=name[:30],
            store_name=name,
            created_at=at,
            updated_at=at,
            plan=tuple(plan) if plan else default_plan(platform, batches),
        )

    def _place(self, conn: SimConnection, kind: str, now: datetime, period: timedelta) -> None:
        """Back-date an existing connection so that, now, it sits in stage/health `kind`."""
        rng = self._rng
        initial = self.scaled(self.draw_initial_sync(conn))
        if kind == "initial":
            conn.created_at = now - initial * rng.uniform(0.0, 0.8)
            conn.ready_due = conn.created_at + initial
        elif kind == "historical":
            batch = self.scaled(log_uniform(rng, profile(conn.platform).batch))
            conn.ready_at = now - batch * rng.uniform(0.0, 0.8)
            conn.created_at = conn.ready_at - initial
            conn.history_done = rng.randrange(conn.history_batches)
            conn.last_sync_completed_at = conn.ready_at
        else:
            conn.created_at = now - self.scaled(rng.uniform(7.0, 365.0) * 86400.0)
            conn.ready_at = conn.created_at + initial
            conn.history_done = conn.history_batches
            conn.last_sync_completed_at = now - period * rng.random()
            if kind == "unhealthy":
                conn.is_healthy = False
            elif kind == "needs_update":
                conn.needs_update = True
            elif kind == "disabled":
                conn.disabled = True
                conn.disabled_reason = rng.choice(DISABLE_REASONS)
        if conn.last_sync_completed_at is not None:
            conn.last_sync_started_at = conn.last_sync_completed_at - period / 30
        conn.updated_at = max(conn.created_at, now - period * rng.random())

    def _add(self, conn: SimConnection) -> None:
        self._live_conns[conn.id] = conn
        self._by_token[conn.access_token] = conn
        self._changed(conn, conn.updated_at)

    # -------------------------------------------------------------------------------------------- control

    def make_ready(self, connection_id: str, *, webhook: bool = True) -> SimConnection:
        """The initial sync (first batch) finished: INITIAL_UPDATE."""
        conn = self._live(connection_id)
        self.apply_ready(conn, self.clock.now(), webhook=webhook)
        self.evolution.plan(conn, self.clock.now())
        return conn

    def complete_batch(self, connection_id: str, *, webhook: bool = True) -> SimConnection:
        """One more history batch finished: HISTORICAL_UPDATE (after the last, history is complete)."""
        conn = self._live(connection_id)
        self.apply_batch(conn, self.clock.now(), webhook=webhook)
        self.evolution.plan(conn, self.clock.now())
        return conn

    def set_unhealthy(self, connection_id: str, unhealthy: bool = True) -> SimConnection:
        """Mark unhealthy (or healthy again). Rutter sends no webhook for it: only polling can tell."""
        conn = self._live(connection_id)
        self.apply_unhealthy(conn, unhealthy, self.clock.now())
        self.evolution.plan(conn, self.clock.now())
        return conn

    def needs_update(self, connection_id: str, *, webhook: bool = True) -> SimConnection:
        """The merchant revoked access: CONNECTION_NEEDS_UPDATE with the update_url."""
        conn = self._live(connection_id)
        self.apply_needs_update(conn, self.clock.now(), webhook=webhook)
        self.evolution.plan(conn, self.clock.now())
        return conn

    def reconnect(self, connection_id: str, *, webhook: bool = True) -> SimConnection:
        """The merchant re-authenticated: CONNECTION_UPDATED; clears needs-update, disabled and unhealthy."""
        conn = self._live(connection_id)
        self.apply_reconnect(conn, self.clock.now(), webhook=webhook)
        self.evolution.plan(conn, self.clock.now())
        return conn

    def disable(self, connection_id: str, reason: str | None, *, webhook: bool = True) -> SimConnection:
        """CONNECTION_DISABLED; the standardized `reason` is only visible through the status endpoint."""
        conn = self._live(connection_id)
        self.apply_disable(conn, reason, self.clock.now(), webhook=webhook)
        self.evolution.plan(conn, self.clock.now())
        return conn

    def delete(self, connection_id: str) -> SimConnection:
        """The connection is gone from the list and its token stops working (Rutter sends no webhook)."""
        conn = self._live(connection_id)
        self.apply_delete(conn, self.clock.now())
        return conn

    def entity(self, connection_id: str, code: str, *, webhook: bool = True) -> SimConnection:
        """Data flowed: an entity webhook (ORDER_CREATED, EXPENSE_UPDATED, ...); freshness moves to now."""
        if not is_entity_code(code):
            raise SimError(f"not an entity webhook code: {code}")
        conn = self._live(connection_id)
        self.apply_entity(conn, code, self.clock.now(), webhook=webhook)
        return conn

    def emit(self, connection_id: str, code: str) -> SimConnection:
        """Queue connection webhook `code` again without changing anything: a late or repeated delivery."""
        conn = self._live(connection_id)
        self._emit(conn, code, self.clock.now())
        return conn

    # --------------------------------------------------- state changes (shared with Evolution, time given)

    def apply_ready(self, conn: SimConnection, at: datetime, *, webhook: bool = True) -> None:
        """The first batch finished at `at`: ready to serve data."""
        if conn.is_ready:
            raise SimError("connection is already ready")
        conn.ready_at = at
        conn.last_sync_started_at = conn.last_sync_started_at or conn.created_at
        conn.last_sync_completed_at = at
        self._changed(conn, at)
        if webhook:
            self._emit(conn, "INITIAL_UPDATE", at)

    def apply_batch(self, conn: SimConnection, at: datetime, *, webhook: bool = True) -> None:
        """The next history batch finished at `at`."""
        if not conn.is_ready:
            raise SimError("connection is not ready: its first batch is still running")
        if conn.history_done >= conn.history_batches:
            raise SimError("no history batch is pending")
        conn.history_done += 1
        conn.last_sync_started_at = at - self.scaled(120.0)
        conn.last_sync_completed_at = at
        self._changed(conn, at)
        if webhook:
            batch = conn.plan[conn.history_done]
            ranges = [{"platformEntity": entity, "xMonthsAgo": batch.months} for entity in batch.entities]
            self._emit(conn, "HISTORICAL_UPDATE", at, entities_included_to_time_range=ranges)

    def apply_unhealthy(self, conn: SimConnection, unhealthy: bool, at: datetime) -> None:
        """Syncs start failing (or work again); Rutter announces neither."""
        conn.is_healthy = not unhealthy
        self._changed(conn, at)

    def apply_needs_update(self, conn: SimConnection, at: datetime, *, webhook: bool = True) -> None:
        """Access was revoked at `at`: the merchant must re-authenticate."""
        conn.needs_update = True
        self._changed(conn, at)
        if webhook:
            self._emit(conn, "CONNECTION_NEEDS_UPDATE", at)

    def apply_reconnect(self, conn: SimConnection, at: datetime, *, webhook: bool = True) -> None:
        """The merchant reconnected at `at`: every problem flag clears."""
        conn.needs_update = False
        conn.disabled = False
        conn.disabled_reason = None
        conn.is_healthy = True
        self._changed(conn, at)
        if webhook:
            self._emit(conn, "CONNECTION_UPDATED", at)

    def apply_disable(self, conn: SimConnection, reason: str | None, at: datetime, *, webhook: bool = True) -> None:
        """Rutter disabled the connection at `at` for `reason`."""
        conn.disabled = True
        conn.disabled_reason = reason
        self._changed(conn, at)
        if webhook:
            self._emit(conn, "CONNECTION_DISABLED", at)

    def apply_delete(self, conn: SimConnection, at: datetime) -> None:
        """The connection was deleted at `at`; it stays readable through get() only."""
        conn.deleted_at = at
        conn.generation += 1  # void every planned action
        del self._live_conns[conn.id]
        self._by_token.pop(conn.access_token, None)
        self._deleted[conn.id] = conn
        self._changed(conn, at)

    def apply_entity(self, conn: SimConnection, code: str, at: datetime, *, webhook: bool = True) -> None:
        """A record changed on the platform and a sync brought it in at `at`."""
        conn.entity_events += 1
        self.apply_sync(conn, at)  # the sync that brought the change in completed now
        if webhook:
            payload = views.entity_webhook(conn, code, at, conn.entity_events)
            self._outbox.append(OutgoingWebhook(code, conn.id, payload, at))

    def apply_sync(self, conn: SimConnection, at: datetime) -> None:
        """A routine incremental sync completed (no webhook by itself)."""
        conn.last_sync_started_at = at - self.scaled(120.0)
        conn.last_sync_completed_at = at

    # -------------------------------------------------------------------------------------------- helpers

    def scaled(self, seconds: float) -> timedelta:
        """A realistic duration in this run's time."""
        return timedelta(seconds=seconds * self.config.time_scale)

    def draw_initial_sync(self, conn: SimConnection) -> float:
        """Realistic seconds the initial sync takes; now and then one stalls (eight times slower)."""
        seconds = log_uniform(self._rng, profile(conn.platform).initial_sync)
        return seconds * 8 if self._rng.random() < 0.08 else seconds

    def _live(self, connection_id: str) -> SimConnection:
        conn = self._live_conns.get(connection_id)
        if conn is None:
            raise KeyError(connection_id)
        return conn

    def _changed(self, conn: SimConnection, at: datetime) -> None:
        conn.updated_at = max(conn.updated_at, at)
        conn.item_json = None
        self._bodies.clear()
        self.version += 1

    def _emit(self, conn: SimConnection, code: str, at: datetime, **extras: Any) -> None:
        if code == "CONNECTION_NEEDS_UPDATE":
            extras.setdefault("update_url", conn.link_url)
        elif code == "CONNECTION_UPDATED":
            extras.setdefault("store_unique_id", conn.store_unique_id)
        payload = views.connection_webhook(conn, code, **extras)
        self._outbox.append(OutgoingWebhook(code, conn.id, payload, at))

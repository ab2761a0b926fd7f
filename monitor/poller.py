"""The polling jobs: the inventory (one list call sees every connection and its coarse status) and status
refreshes (one call per connection, most urgent first, inside the rate budget). APScheduler runs them; tests call
them directly with a FakeClock."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from monitor.clock import Clock
from monitor.domain import (
    Absent,
    ConnectionDetails,
    ConnectionState,
    Health,
    LifecycleStage,
    Listed,
    Listing,
    StatusPolled,
    StatusSnapshot,
    Tick,
)
from monitor.fleet import settle_heap
from monitor.lifecycle import InventoryPlan, plan_inventory
from monitor.ratelimit import RESERVED_SHARE
from monitor.recorder import Recorder
from monitor.rutter.errors import InvalidCredentialsError, NotReadyError, RutterError
from monitor.store import StoreError

log = structlog.get_logger()

YIELD_EVERY = 2000  # give the event loop back this often while walking a large fleet
SETTLE_AFTER_NEW = 1000  # an inventory that added more connections than this freezes the heap again


class RutterApi(Protocol):
    async def list_connections(self, status: str = "any") -> list[Listing]: ...

    async def fetch_status(self, access_token: str, *, background: bool = False) -> StatusSnapshot: ...

    async def fetch_connection(self, access_token: str, *, background: bool = False) -> ConnectionDetails: ...


@dataclass(frozen=True, slots=True)
class PollSettings:
    inventory_interval: timedelta
    status_interval: timedelta
    rate_limit: int  # requests per 10 s the monitor may spend
    status_tick: timedelta = timedelta(seconds=10)
    status_share: float = 1 - RESERVED_SHARE  # of the budget, for refreshes; the rest: inventories, webhook fetches
    concurrency: int = 8


# (rank, -overdue seconds, position, state): most urgent first, then most overdue, ties in fleet order
DueItem = tuple[int, float, int, ConnectionState]
SCAN_CHUNK = 5000  # connections scanned per slice of the status tick, between which the event loop runs


def iter_due(
    states: Iterable[ConnectionState], urgent: set[str], now: datetime, settings: PollSettings, start: int = 0
) -> Iterator[DueItem]:
    """The connections whose refresh is due, as sortable items. Rank 0: urgent or never polled, due at once. Every
    other connection is due once its status is a status interval old, ranked for when the budget cannot serve them
    all: 1 initial or historical sync, 2 unhealthy, 3 recently changed (being seen for the first time is not a
    change), 4 healthy ongoing.

    Nothing is refreshed more often than that: the inventory sees every coarse change (ready, unhealthy, disabled,
    needs re-auth) within one inventory interval, fetching at once the status of a disable, a needs-update or a
    newly ready connection, and webhooks bring stage moves with their own fetch. Refreshes only follow batch
    progress and sync freshness, which the alert thresholds measure in hours; refreshing in-progress connections
    every few minutes cost 2.6x the requests for the same detection (bench/economy.py). Written as datetime
    comparisons against a cut-off computed once: the poller scans every connection each tick, and at 100,000
    connections timedelta arithmetic per connection blocked the event loop for a third of a second
    (bench/scale.py)."""
    ongoing, unhealthy = LifecycleStage.ONGOING, Health.UNHEALTHY
    cut = now - settings.status_interval  # last polled at or before the cut-off: due; updated after it: recent
    for position, state in enumerate(states, start):
        if state.deleted_at is not None or not state.access_token:
            continue
        last = state.last_status_at
        if last is None or state.id in urgent:
            yield (0, -0.0, position, state)
            continue
        if last > cut:
            continue
        if state.lifecycle_stage is not ongoing:
            rank = 1
        elif state.health is unhealthy:
            rank = 2
        elif state.updated_at > cut and state.updated_at != state.first_seen_at:
            rank = 3
        else:
            rank = 4
        yield (rank, -(cut - last).total_seconds(), position, state)


async def most_due(
    ids: Sequence[str],
    lookup: Callable[[str], ConnectionState | None],
    urgent: set[str],
    now: datetime,
    settings: PollSettings,
    limit: int,
) -> tuple[list[ConnectionState], float]:
    """The `limit` most due of the connections `ids` names (`iter_due` order) and the largest overdue (0 when none),
    scanned in slices that give the event loop back in between, keeping only the best `limit` items at a time.

    The scan takes ids and looks each slice's states up: a tuple of strings is a container the garbage collector
    stops tracking, where a list of 100,000 states stayed tracked through the whole scan and made every middle-
    generation collection in it walk 100,000 references (8-12 ms instead of 3-9 ms, bench/README.md)."""
    best: list[DueItem] = []
    worst = 0.0
    for begin in range(0, len(ids), SCAN_CHUNK):
        states = [s for cid in ids[begin : begin + SCAN_CHUNK] if (s := lookup(cid)) is not None]
        chunk = list(iter_due(states, urgent, now, settings, begin))
        if chunk:
            worst = max(worst, -min(item[1] for item in chunk))
            best = heapq.nsmallest(limit, best + chunk)
        await asyncio.sleep(0)
    return [item[3] for item in best], worst


class Poller:
    """Inventory and status jobs; every error becomes a counter label and a log line, never a dead scheduler."""

    def __init__(self, api: RutterApi, recorder: Recorder, clock: Clock, settings: PollSettings) -> None:
        self._api = api
        self._recorder = recorder
        self._clock = clock
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.concurrency)
        self.inventories = 0
        self._last_plan: InventoryPlan | None = None

    @property
    def status_tick_seconds(self) -> float:
        return self._settings.status_tick.total_seconds()

    @property
    def status_batch(self) -> int:
        """Refreshes per tick that keep within the budget share."""
        per_second = self._settings.rate_limit * self._settings.status_share / 10.0
        return max(1, int(per_second * self._settings.status_tick.total_seconds()))

    def effective_status_interval(self, fleet_size: int) -> timedelta:
        """The status interval the budget really allows for a fleet of this size."""
        per_hour = self.status_batch * 3600.0 / self._settings.status_tick.total_seconds()
        needed = timedelta(hours=fleet_size / per_hour) if per_hour else self._settings.status_interval
        return max(self._settings.status_interval, needed)

    async def inventory(self) -> bool:
        """List every connection; classify new ones, update known ones, and delete the ones gone twice."""
        metrics = self._recorder.metrics
        try:
            listings = await self._api.list_connections("any")
        except RutterError as exc:
            metrics.poll_runs.labels("inventory", "error").inc()
            log.warning("poll failed", task="inventory", error=type(exc).__name__, detail=str(exc))
            return False
        fetched = await self._details_for_changes(listings)
        known_before = len(self._recorder.fleet)
        try:
            await self._apply_inventory(listings, fetched)
        except StoreError as exc:
            metrics.poll_runs.labels("inventory", "error").inc()
            log.warning("poll failed", task="inventory", error="StoreError", detail=str(exc))
            return False
        now = self._clock.now()
        await self._recorder.store.record_inventory(now, len(listings))
        metrics.last_inventory.set(now.timestamp())
        metrics.poll_runs.labels("inventory", "success").inc()
        self.inventories += 1
        if len(self._recorder.fleet) - known_before > SETTLE_AFTER_NEW:
            settle_heap()
        log.info("inventory done", listed=len(listings))
        return True

    def _changed(self, listing: Listing) -> bool:
        """Does the listing announce a change whose record needs the status? A disable (its reason goes on the
        transition), a needs-update (the store name goes in the alert), or the end of the initial sync (historical
        or ongoing next: historical_sync is listed active all along). Unhealthy and back to healthy are recorded
        from the listing alone: the status adds nothing to them, and fetching it only delays the inventory."""
        state = self._recorder.fleet.get(listing.id)
        if state is None or state.deleted_at is not None:
            return False
        if listing.status == "disabled":
            return not state.is_disabled
        if listing.status == "needs_reauth":
            return not state.needs_update
        return listing.status == "active" and state.lifecycle_stage is LifecycleStage.INITIAL_SYNC

    async def _details_for_changes(
        self, listings: list[Listing]
    ) -> dict[str, tuple[StatusSnapshot | None, ConnectionDetails | None]]:
        """Statuses of the connections whose listing changed, so each transition is recorded once, with its reason."""
        changed = [item for item in listings if self._changed(item)][: self.status_batch]
        results = await asyncio.gather(*(self._fetch(item.id, item.access_token) for item in changed))
        return {item.id: result for item, result in zip(changed, results, strict=True) if result[0] is not None}

    async def _apply_inventory(
        self, listings: list[Listing], fetched: dict[str, tuple[StatusSnapshot | None, ConnectionDetails | None]]
    ) -> None:
        recorder = self._recorder
        async with recorder.lock:
            now = self._clock.now()
            known = {s.id: s for s in recorder.fleet.live()}
            plan = plan_inventory(known, {item.id for item in listings}, previous=self._last_plan)
            self._last_plan = plan
            if plan.suspect:
                log.warning("inventory suspect", listed=len(listings), known=len(known))
            unit = recorder.unit()
            for n, item in enumerate(listings, 1):
                status, details = fetched.get(item.id, (None, None))
                if status is not None:
                    recorder.urgent.discard(item.id)
                    unit.apply(item.id, StatusPolled(status, details), now)
                unit.apply(item.id, Listed(item), now)
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            for connection_id in sorted(plan.absent):
                unit.apply(connection_id, Absent(), now)
            await recorder.commit(unit)

    async def refresh_statuses(self) -> int:
        """One tick: refresh the most urgent due statuses within the budget share; expire missed-webhook grace."""
        recorder = self._recorder
        now = self._clock.now()
        await self._expire(now)
        ids = recorder.fleet.live_ids()
        chosen, lag = await most_due(ids, recorder.fleet.get, recorder.urgent, now, self._settings, self.status_batch)
        recorder.metrics.gauges.status_refresh_lag_seconds = lag
        if not chosen:
            return 0
        results = await asyncio.gather(
            *(self._fetch(state.id, state.access_token or "", background=True) for state in chosen)
        )
        ok = [(s, r) for s, r in zip(chosen, results, strict=True) if r[0] is not None]
        try:
            async with recorder.lock:
                unit = recorder.unit()
                now = self._clock.now()
                for state, (status, details) in ok:
                    assert status is not None
                    recorder.urgent.discard(state.id)
                    unit.apply(state.id, StatusPolled(status, details), now)
                await recorder.commit(unit)
        except StoreError as exc:
            recorder.metrics.poll_runs.labels("status", "error").inc()
            log.warning("poll failed", task="status", error="StoreError", detail=str(exc))
            return 0
        recorder.metrics.poll_runs.labels("status", "success").inc()
        return len(ok)

    async def _fetch(
        self, connection_id: str, token: str, *, background: bool = False
    ) -> tuple[StatusSnapshot | None, ConnectionDetails | None]:
        """The status, plus the store name of a connection that has just become disabled or in need of an update,
        which an alert will name and may be routed by. Routine refreshes
        are `background`: they leave the rate limiter's reserve to the inventory and webhook fetches."""
        state = self._recorder.fleet.get(connection_id)
        async with self._slots:
            try:
                status = await self._api.fetch_status(token, background=background)
                details = None
                if _newly_needs_action(state, status):
                    details = await self._api.fetch_connection(token, background=background)
                return status, details
            except NotReadyError:
                return None, None
            except InvalidCredentialsError:
                # a rotated token: the next inventory brings the new one
                self._recorder.urgent.discard(connection_id)
                log.warning("poll failed", task="status", connection_id=connection_id, error="InvalidCredentialsError")
                return None, None
            except RutterError as exc:
                self._recorder.metrics.poll_runs.labels("status", "error").inc()
                log.warning("poll failed", task="status", connection_id=connection_id, error=type(exc).__name__)
                return None, None

    async def _expire(self, now: datetime) -> None:
        grace = self._recorder.settings.missed_webhook_grace
        waiting = [
            s.id
            for s in self._recorder.fleet.live()
            if s.pending_webhooks and min(p.seen_at for p in s.pending_webhooks) + grace <= now
        ]
        if not waiting:
            return
        async with self._recorder.lock:
            unit = self._recorder.unit()
            for connection_id in waiting:
                unit.apply(connection_id, Tick(), now)
            await self._recorder.commit(unit)


def _newly_needs_action(state: ConnectionState | None, status: StatusSnapshot) -> bool:
    """Does this status move the connection into disabled or needs-update, with no store name known yet? One seen so
    at first sight (disabled before the monitor was installed) keeps the listing's name: fetching every such
    store name cost 6% of an hour's requests at 10,000 connections (bench/economy.py). A disable the monitor saw
    happen from its webhook alone (the fetch deferred for want of budget, or timed out) has neither reason nor name
    yet: this refresh is the one that brings them to its alert. (Disabled since first sight: health_since is
    first_seen_at, and the rule above holds; counting those too cost 4% more requests in bench/economy.py.)"""
    if state is not None and state.store_name is not None:
        return False
    if state is None:
        return status.is_disabled or status.needs_update
    webhook_only_disable = (
        state.is_disabled and state.disabled_reason is None and state.health_since > state.first_seen_at
    )
    return (status.is_disabled and (not state.is_disabled or webhook_only_disable)) or (
        status.needs_update and not state.needs_update
    )

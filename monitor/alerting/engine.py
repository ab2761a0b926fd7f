"""The incident engine's shell: evaluates the rules of changed and due connections, asks the pure core
(monitor.alerting.incidents) what that means, persists incidents, storms and outbox rows in one transaction, then
updates its in-memory book, wakes the delivery worker and tells Alertmanager.

Evaluation runs on every committed change (the recorder's listener marks connections dirty and `run` picks them up
at once) and on a schedule (`tick`, every MONITOR_ALERT_EVAL_INTERVAL), which evaluates only the connections whose
next rule deadline has come, plus the timers (group wait, hold-down) of every open incident."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import aiohttp
import structlog

from monitor.alerting.alertmanager import AlertmanagerPusher, AlertmanagerSink
from monitor.alerting.incidents import Book, Decision, EngineSettings, Observation, decide, firing_counts
from monitor.alerting.messages import DEFAULT_DASHBOARD_URL
from monitor.alerting.model import Incident, NoticeKind, OutboxMessage, OutboxRow, Phase
from monitor.alerting.outbox import Delivery, build_channels
from monitor.alerting.routing import Router, build_router, plan, routing_problems
from monitor.alerting.rules import AlertName, ThresholdPolicy, Thresholds, evaluate, next_deadline
from monitor.clock import Clock
from monitor.config import ConfigError, Settings
from monitor.domain import ConnectionState
from monitor.fleet import Fleet
from monitor.metrics import FiringCounts, Metrics
from monitor.store import Store, StoreError

log = structlog.get_logger()

STALL_ALERTS = frozenset({AlertName.INITIAL_SYNC_STALLED, AlertName.HISTORICAL_SYNC_STALLED, AlertName.SYNC_STALE})
CHUNK = 2_000  # connections per decision: a whole-fleet change never holds the event loop for long


@dataclass(frozen=True, slots=True)
class AlertingConfig:
    """What the engine needs of the settings."""

    engine: EngineSettings
    policy: ThresholdPolicy
    dashboard_url: str = DEFAULT_DASHBOARD_URL

    @classmethod
    def of(cls, s: Settings) -> AlertingConfig:
        """Thresholds with their per-platform overrides (`[alerts.platforms.X]`), hold-down, group wait, storms."""
        default = Thresholds(
            unhealthy_after=s.monitor_unhealthy_alert_after,
            initial_sync_stall_after=s.monitor_initial_sync_stall_after,
            historical_sync_stall_after=s.monitor_historical_sync_stall_after,
            sync_stale_after=s.monitor_sync_stale_after,
        )
        platforms = {
            name.upper(): Thresholds(
                unhealthy_after=o.unhealthy_alert_after or default.unhealthy_after,
                initial_sync_stall_after=o.initial_sync_stall_after or default.initial_sync_stall_after,
                historical_sync_stall_after=o.historical_sync_stall_after or default.historical_sync_stall_after,
                sync_stale_after=o.sync_stale_after or default.sync_stale_after,
            )
            for name, o in s.alerts.platforms.items()
        }
        return cls(
            engine=EngineSettings(
                hold_down=s.monitor_resolve_hold_down,
                group_wait=s.monitor_group_wait,
                storm_threshold=s.monitor_storm_threshold,
                storm_window=s.monitor_storm_window,
            ),
            policy=ThresholdPolicy(default=default, platforms=platforms),
            dashboard_url=s.monitor_rutter_dashboard_url,
        )


def _new_key(prefix: str) -> str:
    return f"{prefix[0]}-{uuid.uuid4().hex}"


class AlertEngine:
    """Incidents of the whole fleet. Call `start` once, register `on_commit` as a recorder listener, run `run`
    (and the delivery and Alertmanager loops) as tasks and `tick` on a schedule."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        clock: Clock,
        config: AlertingConfig,
        router: Router,
        delivery: Delivery | None = None,
        pusher: AlertmanagerPusher | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._clock = clock
        self._config = config
        self._router = router
        self.delivery = delivery
        self.pusher = pusher
        self.book = Book()
        self.lock = asyncio.Lock()  # decisions and outbox claims never interleave
        self._pass = asyncio.Lock()  # one evaluation pass at a time: a caller returns once changes are evaluated
        self._dirty: set[str] = set()
        self._changed = asyncio.Event()
        self._deadlines: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the book from the store, then evaluate every connection once: a restart re-sends nothing."""
        found, storms = await self._store.load_alerting()
        self.book = Book(found, storms)
        if self.pusher is not None:
            for incident in self.book.incidents.values():
                if incident.phase is Phase.FIRING:
                    self.pusher.fire(incident.key, incident.view())
        ids = {state.id for state in self._fleet.live()} | set(self.book.by_connection)
        await self._evaluate_many(sorted(ids), scan=True)
        log.info("alert engine started", open_incidents=len(self.book.incidents), storms=len(self.book.storms))

    def on_commit(self, states: Sequence[ConnectionState]) -> None:
        """Recorder listener: evaluate these connections at once (in `run`)."""
        self._dirty.update(state.id for state in states)
        self._changed.set()

    def on_claim(self, row: OutboxRow) -> None:
        """Delivery hook: a firing message is leaving, so a storm may no longer withdraw it."""
        if row.message.kind is NoticeKind.FIRING:
            self.book.mark_attempted(row.message.group)

    async def run(self, idle: float = 1.0) -> None:
        """Evaluate changes as they are committed, until stopped."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=idle)
            self._changed.clear()
            try:
                await self.evaluate_changed()
            except StoreError as exc:
                log.warning("alert evaluation failed", error="StoreError", detail=str(exc))
            except Exception:  # a bug must not end evaluation for good: log it, keep going
                log.exception("alert evaluation crashed")

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()

    async def evaluate_changed(self) -> None:
        """Evaluate the connections changed since the last evaluation."""
        async with self._pass:
            ids, self._dirty = self._dirty, set()
            if ids:
                await self._evaluate_many(sorted(ids), scan=False)

    async def tick(self) -> None:
        """The scheduled evaluation: due rule deadlines, pending changes, and every incident's timers."""
        async with self._pass:
            now = self._clock.now()
            due: set[str] = set()
            while self._heap and self._heap[0][0] <= now:
                when, cid = heapq.heappop(self._heap)
                if self._deadlines.get(cid) == when:
                    del self._deadlines[cid]
                    due.add(cid)
            ids, self._dirty = self._dirty | due, set()
            try:
                await self._evaluate_many(sorted(ids), scan=True)
            except StoreError as exc:
                log.warning("alert evaluation failed", error="StoreError", detail=str(exc))

    async def deliver_due(self) -> int:
        """One delivery step (tests drive delivery with it)."""
        return 0 if self.delivery is None else await self.delivery.deliver_due()

    # -- reading ---------------------------------------------------------------------------------------------

    def firing_counts(self) -> FiringCounts:
        return firing_counts(self.book.incidents.values())

    def stalled_ids(self) -> frozenset[str]:
        """Connections whose stall condition holds (initial or historical sync stalled, sync stale)."""
        return frozenset(i.connection_id for i in self.book.incidents.values() if i.alert in STALL_ALERTS and i.holding)

    def open_alerts(self) -> list[dict[str, Any]]:
        """Open incidents as the API lists them, oldest first."""
        ordered = sorted(self.book.incidents.values(), key=lambda i: (i.since, i.connection_id, i.alert))
        return [alert_json(i) for i in ordered]

    # -- deciding --------------------------------------------------------------------------------------------

    async def _evaluate_many(self, ids: Sequence[str], *, scan: bool) -> None:
        chunks = [ids[n : n + CHUNK] for n in range(0, len(ids), CHUNK)] or [()]
        for n, chunk in enumerate(chunks):
            await self._evaluate(chunk, scan=scan and n == len(chunks) - 1)
            if n < len(chunks) - 1:
                await asyncio.sleep(0)

    async def _evaluate(self, ids: Sequence[str], *, scan: bool) -> None:
        async with self.lock:
            now = self._clock.now()
            observations = []
            for cid in ids:
                state = self._fleet.get(cid)
                if state is None:
                    continue
                thresholds = self._config.policy.for_platform(state.platform)
                conditions = evaluate(state, now, thresholds)
                self._plan_deadline(state, now, thresholds)
                if conditions or cid in self.book.by_connection:
                    observations.append(Observation(state, conditions))
            decision = decide(self.book, observations, now, self._config.engine, new_key=_new_key, scan=scan)
            if decision.empty:
                return
            messages = self._messages(decision, now)
            try:
                await self._store.save_alerting(decision.incidents, decision.storms, messages, decision.withdrawn)
            except StoreError:
                self._dirty.update(ids)
                raise
            before = {i.key: self.book.incidents.get(i.key) for i in decision.incidents}
            self.book.apply(decision)
        self._published(decision, before)
        if messages and self.delivery is not None:
            self.delivery.wake()

    def _plan_deadline(self, state: ConnectionState, now: datetime, thresholds: Thresholds) -> None:
        when = next_deadline(state, now, thresholds)
        if when is None:
            self._deadlines.pop(state.id, None)
        elif self._deadlines.get(state.id) != when:
            self._deadlines[state.id] = when
            heapq.heappush(self._heap, (when, state.id))
            if len(self._heap) > 2 * len(self._deadlines) + 1024:  # outdated entries pile up: rebuild
                self._heap = [(due, cid) for cid, due in self._deadlines.items()]
                heapq.heapify(self._heap)

    def _messages(self, decision: Decision, now: datetime) -> list[OutboxMessage]:
        out: list[OutboxMessage] = []
        for notice in decision.notices:
            if notice.incident is not None:
                i = notice.incident
                target = self._router.for_connection(i.platform, i.name, i.store_name)
            elif notice.storm is not None:
                target = self._router.for_platform(notice.storm.platform)
            else:
                continue
            if target is not None:
                out.extend(plan(notice, target, now, dashboard_url=self._config.dashboard_url))
        return out

    def _published(self, decision: Decision, before: dict[str, Incident | None]) -> None:
        for incident in decision.incidents:
            old = before.get(incident.key)
            if old is None:
                log.info("incident opened", **_fields(incident))
            was_firing = old is not None and old.phase is Phase.FIRING
            if self.pusher is not None:
                if incident.open and incident.phase is Phase.FIRING:
                    self.pusher.fire(incident.key, incident.view(), urgent=not was_firing)
                elif not incident.open and was_firing:
                    self.pusher.end(incident.key, incident.view())
            if not incident.open:
                log.info("incident resolved", **_fields(incident), announced=incident.announced)
        for notice in decision.notices:
            subject = notice.incident.platform if notice.incident else notice.storm.platform if notice.storm else ""
            log.info("alert notice", kind=notice.kind.value, group=notice.group, platform=subject)


def _fields(incident: Incident) -> dict[str, str]:
    return {
        "connection_id": incident.connection_id,
        "platform": incident.platform,
        "alert": incident.alert.value,
        "severity": incident.severity.value,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def alert_json(incident: Incident) -> dict[str, Any]:
    """One open incident as GET /api/v1/alerts shows it."""
    return {
        "connection_id": incident.connection_id,
        "platform": incident.platform,
        "alert": incident.alert.value,
        "severity": incident.severity.value,
        "state": incident.state,
        "since": _iso(incident.since),
        "detected_at": _iso(incident.detected_at),
        "reason": incident.reason,
        "store_name": incident.store_name,
        "name": incident.name,
        "link_url": incident.link_url,
        "stage": incident.stage.value,
        "health": incident.health.value,
        "rolled_up": incident.storm_key is not None and not incident.announced,
    }


def build_engine(
    settings: Settings,
    *,
    store: Store,
    fleet: Fleet,
    clock: Clock,
    metrics: Metrics,
    session: aiohttp.ClientSession | None,
    console: TextIO | None = None,
) -> AlertEngine:
    """The engine with its routes, delivery worker and Alertmanager pusher, from the settings."""
    problems = routing_problems(settings)
    if problems:
        raise ConfigError(problems)
    router = build_router(settings, console=console is not None)
    channels = build_channels(settings, router, session, console)
    engine = AlertEngine(store, fleet, clock, AlertingConfig.of(settings), router)
    if channels:
        engine.delivery = Delivery(store, clock, metrics, channels, lock=engine.lock, on_claim=engine.on_claim)
    if settings.alertmanager_url and session is not None:
        sink = AlertmanagerSink(session, settings.alertmanager_url)
        engine.pusher = AlertmanagerPusher(
            sink,
            clock,
            resend=settings.alertmanager_resend_interval,
            dashboard_url=settings.monitor_rutter_dashboard_url,
        )
    metrics.watch_alerts(engine.firing_counts)
    return engine

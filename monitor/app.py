"""Composition root: builds the daemon's parts from Settings and wires them into aiohttp applications. Long-lived
resources (store, HTTP client session, scheduler, background tasks) are owned by Daemon and started in the main
application's cleanup_ctx, so they close in reverse order after in-flight requests finished."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import aiohttp
import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from monitor.alerting.engine import AlertEngine, build_engine
from monitor.alerting.routing import routing_problems
from monitor.api import AdminApi
from monitor.clock import Clock, SystemClock
from monitor.config import ConfigError, Settings, format_duration
from monitor.exposition import Exposition
from monitor.fleet import Fleet, bulk_load
from monitor.ingest import DedupeIndex, InboxWriter, WebhookEndpoint
from monitor.leader import leadership_for
from monitor.lifecycle import LifecycleSettings
from monitor.metrics import Metrics
from monitor.poller import Poller, PollSettings, RutterApi
from monitor.processor import Processor
from monitor.ratelimit import SlidingWindowLimiter
from monitor.recorder import Recorder
from monitor.rutter.client import RutterClient
from monitor.store import Store, StoreError
from monitor.store.sql import open_store, redact_url

log = structlog.get_logger()

# Issue 3: a disable's reason comes from the status endpoint, but a critical alert must reach Slack within 1 s of
# its webhook. A status not known within this budget is fetched again by the poller, and the alert engine sends the
# reason as a follow-up when it arrives.
STATUS_FETCH_TIMEOUT = 0.5
# Inbox rows per processor transaction. Each save rewrites its rows (2 KB bodies) to mark them processed, and the
# inbox commits queued behind it in the SQLite worker wait for it: 100 rows held the worker 8-13 ms, 10 rows about
# 1-2 ms. p99 ack at 2,000 req/s went from 58-104 ms to 15-29 ms (session 4, while the status budget held the
# processor back; bench/ingest.py).
PROCESS_BATCH = 10
# Once the processor falls behind (rows a second old) batches double up to this: a batch of 10 entity webhooks cost
# ~80-100 us of the loop's CPU per webhook, one of 80 ~30 (the per-batch read and transaction), so the inbox catches
# up at 2-3x the pace. Larger saves hold the store longer, so acks wait more meanwhile: the batches stay at 10 while
# the processor keeps up (bench/README.md, session 8).
PROCESS_BATCH_MAX = 80
ALERT_STOP_GRACE = 10.0  # seconds to finish the notification attempt in flight at shutdown
LEADERSHIP_CHECK = 5.0  # seconds between leadership rounds: a standby takes over within this of the leader's death


class Daemon:
    """Every long-lived part of one running monitor."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        rutter: RutterApi | None = None,
        schedule: bool = True,
        console: TextIO | None = None,
    ) -> None:
        """`console`: where the demo prints notifications when no Slack target is configured."""
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.exposition = Exposition(self.registry)
        self._rutter_override = rutter
        self._schedule = schedule
        self._console = console
        self._tasks: list[asyncio.Task[None]] = []
        self._alert_tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._alert_session: aiohttp.ClientSession | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self.leading = False
        self.leadership_lost = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        s = self.settings
        problems = routing_problems(s)
        if problems:
            raise ConfigError(problems)
        log.info("store opening", url=redact_url(s.monitor_database_url))
        sql = await open_store(s.monitor_database_url, clock=self.clock)
        self.store: Store = sql
        self.leadership = leadership_for(s.monitor_database_url, sql.engine)
        self.fleet = Fleet()  # filled when this replica leads: a standby exports no fleet gauges
        now = self.clock.now()
        self.metrics.watch_fleet(self.fleet.snapshot, self.clock.now)
        self.metrics.inventory_interval.set(s.monitor_inventory_interval.total_seconds())
        last = await self.store.last_inventory()
        if last is not None:
            self.metrics.last_inventory.set(last.timestamp())
        dedupe = DedupeIndex(s.monitor_dedupe_window)
        dedupe.seed(await self.store.dedupe_rows(now - s.monitor_dedupe_window))
        self.dedupe = dedupe
        self.recorder = Recorder(
            self.store, self.fleet, self.metrics, LifecycleSettings(s.monitor_missed_webhook_grace)
        )
        self.limiter = SlidingWindowLimiter(s.monitor_rate_limit, 10.0, clock=self.clock)
        self.metrics.rate_budget_used.set_function(self.limiter.used_ratio)
        self.rutter = self._rutter_override or self._client()
        self.processor = Processor(
            self.recorder,
            self.clock,
            self.rutter,
            fast_wait=STATUS_FETCH_TIMEOUT,
            batch_size=PROCESS_BATCH,
            max_batch=PROCESS_BATCH_MAX,
            fetch_delay=self.limiter.delay,
        )
        self._alert_session = aiohttp.ClientSession()  # Slack and Alertmanager
        self.engine: AlertEngine = build_engine(
            s,
            store=self.store,
            fleet=self.fleet,
            clock=self.clock,
            metrics=self.metrics,
            session=self._alert_session,
            console=self._console,
        )
        self.recorder.listeners.append(self.engine.on_commit)
        self.writer = InboxWriter(self.store, dedupe, self.metrics, on_commit=self.processor.wake)

        self.webhooks = WebhookEndpoint(
            self.writer,
            self.metrics,
            self.clock,
            secrets=s.webhook_secrets(),
            max_bytes=s.monitor_webhook_max_bytes,
        )
        self.poller = Poller(
            self.rutter,
            self.recorder,
            self.clock,
            PollSettings(
                inventory_interval=s.monitor_inventory_interval,
                status_interval=s.monitor_status_interval,
                rate_limit=s.monitor_rate_limit,
            ),
        )
        self._tasks.append(asyncio.create_task(self.writer.run(), name="inbox-writer"))
        if await self.leadership.acquire():
            await self._lead()
        else:
            log.info("standing by", reason="another replica leads")
        self._tasks.append(asyncio.create_task(self._leadership_loop(), name="leadership"))
        log.info("daemon started", leading=self.leading, connections=len(self.fleet))

    async def _lead(self) -> None:
        """Become the replica that processes, polls and notifies: load the fleet and incidents, start the jobs."""
        s = self.settings
        with bulk_load():
            for state in await self.store.load_connections(include_deleted=True):
                self.fleet.put(state)
                if state.deleted_at is None:
                    self.metrics.ensure_platform(state.platform)
        await self.engine.start()
        effective = self.poller.effective_status_interval(len(self.fleet))
        if effective > s.monitor_status_interval:
            log.warning(
                "status interval stretched",
                configured=format_duration(s.monitor_status_interval),
                effective=format_duration(effective),
                connections=len(self.fleet),
                rate_limit=s.monitor_rate_limit,
            )
        self._tasks.append(asyncio.create_task(self.processor.run(), name="inbox-processor"))
        self._alert_tasks.append(asyncio.create_task(self.engine.run(), name="alert-engine"))
        if self.engine.delivery is not None:
            self._alert_tasks.append(asyncio.create_task(self.engine.delivery.run(), name="alert-delivery"))
        if self.engine.pusher is not None:
            self._alert_tasks.append(asyncio.create_task(self.engine.pusher.run(), name="alertmanager-push"))
        if self._schedule:
            self._start_scheduler()
        self.leading = True
        self.metrics.leader.set(1)
        log.info("leading", connections=len(self.fleet))

    async def try_lead(self) -> bool:
        """One leadership round: a standby takes over if the lock is free; a leader checks it still holds it."""
        if self.leading:
            if await self.leadership.check():
                return True
            # Another replica may lead already: stop at once rather than act twice. A supervisor restarts us.
            log.error("leadership lost, stopping")
            self.metrics.leader.set(0)
            self.leadership_lost.set()
            return False
        if await self.leadership.acquire():
            await self._lead()
        return self.leading

    async def _leadership_loop(self) -> None:
        # wall-clock time on purpose: lock liveness is about the real world, whatever clock the logic runs on
        while not self.leadership_lost.is_set():
            await asyncio.sleep(LEADERSHIP_CHECK)
            await self.try_lead()

    def _client(self) -> RutterClient:
        s = self.settings
        self._session = aiohttp.ClientSession()
        secret = s.rutter_client_secret.get_secret_value() if s.rutter_client_secret else ""
        return RutterClient(
            self._session,
            base_url=s.rutter_api_url,
            client_id=s.rutter_client_id or "",
            client_secret=secret,
            api_version=s.rutter_api_version,
            limiter=self.limiter,
            observer=self.metrics.observe_api,
            clock=self.clock,
        )

    def _start_scheduler(self) -> None:
        s = self.settings
        scheduler = AsyncIOScheduler(timezone="UTC")
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(
            self.poller.inventory,
            "interval",
            seconds=s.monitor_inventory_interval.total_seconds(),
            next_run_time=datetime.now().astimezone(),
            id="inventory",
            **common,
        )
        scheduler.add_job(
            self.poller.refresh_statuses,
            "interval",
            seconds=self.poller.status_tick_seconds,
            id="status",
            **common,
        )
        scheduler.add_job(
            self.prune, "interval", seconds=s.monitor_prune_interval.total_seconds(), id="prune", **common
        )
        scheduler.add_job(
            self.engine.tick, "interval", seconds=s.monitor_alert_eval_interval.total_seconds(), id="alerts", **common
        )
        scheduler.start()
        self._scheduler = scheduler

    async def prune(self) -> None:
        """Drop processed inbox rows and history past their retention."""
        now = self.clock.now()
        self.dedupe.prune(now)
        try:
            inbox, history = await self.store.prune(
                now - self.settings.monitor_inbox_retention, now - self.settings.monitor_history_retention
            )
        except StoreError as exc:
            self.metrics.poll_runs.labels("prune", "error").inc()
            log.warning("poll failed", task="prune", error="StoreError", detail=str(exc))
            return
        self.metrics.poll_runs.labels("prune", "success").inc()
        log.info("pruned", inbox=inbox, transitions=history)

    async def refresh_gauges(self) -> None:
        """Update the scrape-time gauges that need the store; a store outage leaves the last values."""
        try:
            pending, oldest = await self.store.inbox_backlog()
        except StoreError:
            return
        g = self.metrics.gauges
        g.inbox_pending = pending
        g.inbox_oldest_age_seconds = (
            max(0.0, (self.clock.now() - oldest).total_seconds()) if oldest is not None else 0.0
        )
        try:
            waiting, first = await self.store.outbox_backlog()
        except StoreError:
            return
        g.outbox_pending = waiting
        g.outbox_oldest_age_seconds = max(0.0, (self.clock.now() - first).total_seconds()) if first else 0.0

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready: the store answers and an inventory younger than two intervals exists (persisted ones count)."""
        checks: dict[str, str] = {}
        try:
            await self.store.ping()
            checks["store"] = "ok"
            last = await self.store.last_inventory()
        except StoreError:
            checks["store"] = "unavailable"
            return False, checks
        limit = 2 * self.settings.monitor_inventory_interval
        if last is None:
            checks["inventory"] = "none yet"
        elif self.clock.now() - last > limit:
            checks["inventory"] = "stale"
        else:
            checks["inventory"] = "ok"
        return all(v == "ok" for v in checks.values()), checks

    def stalled_ids(self) -> frozenset[str]:
        """Connections with a stall alert open (initial or historical sync stalled, sync stale)."""
        return self.engine.stalled_ids()

    def open_alerts(self) -> list[dict[str, Any]]:
        """The open incidents, for GET /api/v1/alerts."""
        return self.engine.open_alerts()

    async def stop(self) -> None:
        """Stop taking work, finish what was acknowledged within the shutdown timeout, then close."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        self.writer.close()
        timeout = self.settings.monitor_shutdown_timeout.total_seconds()
        writer_task = self._tasks[0]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer_task), timeout)
        if self.leading and not self.leadership_lost.is_set():
            try:
                await asyncio.wait_for(self.processor.drain(), timeout)
            except (TimeoutError, StoreError) as exc:
                log.warning("shutdown left events unprocessed", error=type(exc).__name__)
            await self._stop_alerting(timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._alert_session is not None:
            await self._alert_session.close()
        await self.leadership.release()
        await self.store.close()
        self.stopped = True
        log.info("daemon stopped", processed=self.processor.processed)

    async def _stop_alerting(self, grace: float) -> None:
        """Evaluate the last committed changes, let the notification in flight finish; the outbox keeps the rest."""
        self.engine.stop()
        try:
            await asyncio.wait_for(self.engine.evaluate_changed(), grace)
        except (TimeoutError, StoreError) as exc:
            log.warning("shutdown left changes unevaluated", error=type(exc).__name__)
        if self.engine.delivery is not None:
            self.engine.delivery.stop()
        if self.engine.pusher is not None:
            self.engine.pusher.stop()
        if self._alert_tasks:
            _, late = await asyncio.wait(self._alert_tasks, timeout=min(grace, ALERT_STOP_GRACE))
            for task in late:
                task.cancel()
            await asyncio.gather(*self._alert_tasks, return_exceptions=True)


@dataclass
class Holder:
    """Lets the admin application reach the daemon that the main application's cleanup_ctx starts."""

    daemon: Daemon | None = None


DAEMON = web.AppKey("daemon", Holder)


def build_apps(daemon: Daemon) -> tuple[web.Application, web.Application | None]:
    """The public application (webhooks, plus everything when no admin port is set) and the optional admin one."""
    holder = Holder()
    public = web.Application()
    public[DAEMON] = holder

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await daemon.start()
        holder.daemon = daemon
        yield
        await daemon.stop()

    public.cleanup_ctx.append(lifetime)

    async def webhook(request: web.Request) -> web.Response:
        return await daemon.webhooks.handle(request)

    public.router.add_post("/webhooks/rutter", webhook)
    admin_api = AdminApi(daemon)
    if daemon.settings.monitor_admin_port is None:
        public.add_routes(admin_api.routes())
        return public, None
    admin = web.Application()
    admin[DAEMON] = holder
    admin.add_routes(admin_api.routes())
    return public, admin


@dataclass
class Running:
    """A started daemon and its listeners."""

    daemon: Daemon
    runners: list[web.AppRunner]
    url: str
    admin_url: str

    async def stop(self) -> None:
        """Close the listeners (waiting for requests in flight), then the daemon; a second call does nothing."""
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            await runner.cleanup()


async def start(daemon: Daemon, *, host: str | None = None, port: int | None = None) -> Running:
    """Start the listeners (port 0 picks a free one) and the daemon behind them."""
    s = daemon.settings
    host = host or s.monitor_host
    public, admin = build_apps(daemon)
    timeout = s.monitor_shutdown_timeout.total_seconds()
    runner = web.AppRunner(public, access_log=None, shutdown_timeout=timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, s.monitor_port if port is None else port)
    await site.start()
    runners = [runner]
    url = _site_url(runner, host)
    admin_url = url
    if admin is not None:
        admin_runner = web.AppRunner(admin, access_log=None, shutdown_timeout=timeout)
        await admin_runner.setup()
        await web.TCPSite(admin_runner, host, s.monitor_admin_port or 0).start()
        runners.append(admin_runner)
        admin_url = _site_url(admin_runner, host)
    log.info("listening", url=url, admin_url=admin_url)
    return Running(daemon, runners, url, admin_url)


def _site_url(runner: web.AppRunner, host: str) -> str:
    addresses = runner.addresses
    port = addresses[0][1] if addresses else 0
    shown = "127.0.0.1" if host in {"0.0.0.0", ""} else host
    return f"http://{shown}:{port}"

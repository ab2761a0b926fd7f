"""Benchmark 4, API economy: 10,000 connections over one simulated hour, on a FakeClock shared by the daemon's jobs,
its rate limiter and the simulator (nothing waits for real time). The daemon runs in-process with its real Rutter
client, webhooks and store; its jobs are called on their virtual schedule (inventory every 5 min, status tick every
10 s) and webhooks arrive over HTTP from the simulator (with 2% dropped and 2% duplicated, as Rutter's delivery does).

Counted: every request the simulator served to the daemon. Checked: every change of a connection into or out of
unhealthy or disabled (the simulator's truth, from its evolution) is seen by the daemon within one inventory interval.

The same run drives bench/naive_exporter.py (every connection's status every 5 minutes) against a twin simulator
(same seed, same evolution) on its own FakeClock, and applies the same detection check to it.

    .venv/bin/python bench/economy.py [--connections 10000] [--minutes 60]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import common
from naive_exporter import NaiveExporter

from monitor.app import Daemon, start
from monitor.clock import FakeClock
from monitor.config import Settings
from monitor.domain import Health, derive_health
from monitor.log import configure
from monitor.simulator import Simulator, SimulatorConfig

T = TypeVar("T")
TARGET_SHARE = 0.10
WATCHED = frozenset({Health.UNHEALTHY, Health.DISABLED})
TICK = 10.0  # seconds of virtual time between status ticks (the daemon's default)


def truth(sim: Simulator) -> dict[str, tuple[Health, datetime]]:
    """Each live connection's health by the daemon's precedence, and when it last changed."""
    return {
        c.id: (derive_health(is_disabled=c.disabled, needs_update=c.needs_update, is_unhealthy=not c.is_healthy),
               c.updated_at)
        for c in sim.model.all()
    }  # fmt: skip


@dataclass
class Detection:
    """Changes into or out of unhealthy/disabled, and how long the observer took to show each."""

    window: timedelta
    pending: dict[str, tuple[Health, datetime]] = field(default_factory=dict)
    delays: list[float] = field(default_factory=list)
    superseded: int = 0  # changed again before being seen
    gone: int = 0  # deleted before being seen
    previous: dict[str, Health] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    late_ones: list[str] = field(default_factory=list)

    def observe(
        self, now: datetime, real: dict[str, tuple[Health, datetime]], seen: Callable[[str], Health | None]
    ) -> None:
        for cid, (health, changed_at) in real.items():
            before = self.previous.get(cid)
            if before is not None and before != health and (before in WATCHED or health in WATCHED):
                if cid in self.pending:
                    self.superseded += 1
                self.pending[cid] = (health, changed_at)
                self.kinds[f"{before.value}->{health.value}"] += 1
            self.previous[cid] = health
        for cid in [c for c in self.pending if c not in real]:
            del self.pending[cid]
            self.gone += 1
        for cid, (health, changed_at) in list(self.pending.items()):
            if seen(cid) == health:
                delay = (now - changed_at).total_seconds()
                self.delays.append(delay)
                if delay > self.window.total_seconds():
                    self.late_ones.append(f"{cid} to {health.value} at {changed_at:%H:%M:%S}, seen {now:%H:%M:%S}")
                del self.pending[cid]

    def late(self, now: datetime) -> int:
        """Seen later than one inventory interval, or still unseen after it."""
        limit = self.window.total_seconds()
        return sum(d > limit for d in self.delays) + sum(now - at > self.window for _, at in self.pending.values())

    def summary(self, now: datetime) -> str:
        ordered = sorted(self.delays)
        worst = ordered[-1] if ordered else float("nan")
        median = common.percentile(ordered, 50)
        limit = self.window.total_seconds()
        seen_late = sum(d > limit for d in ordered)
        return (f"{sum(self.kinds.values())} changes, {len(ordered)} seen (median {median:.0f} s, "
                f"worst {worst:.0f} s), {len(self.pending)} pending at the end, {self.superseded} superseded, "
                f"{self.gone} deleted first; {seen_late} seen later than {limit:.0f} s, "
                f"{self.late(now) - seen_late} still unseen after it")  # fmt: skip


class Inventories:
    """The daemon's inventory job on its schedule: started when the virtual clock reaches each multiple of the
    interval, whatever else is running then, as the daemon's scheduler starts it."""

    def __init__(self, clock: FakeClock, job: Callable[[], Coroutine[Any, Any, object]], interval: timedelta) -> None:
        self.clock, self.job, self.interval = clock, job, interval
        self.due = clock.now()
        self.task: asyncio.Task[object] | None = None
        self.passes: list[str] = []  # each pass, from its start to its end on the virtual clock
        self._began = self.due

    def poll(self) -> None:
        if self.task is not None and self.task.done():
            self.task.result()
            self.passes.append(f"{self._began:%H:%M:%S}-{self.clock.now():%H:%M:%S}")
            self.task = None
        if self.task is None and self.clock.now() >= self.due:
            self._began = self.clock.now()
            self.task = asyncio.ensure_future(self.job())
            while self.due <= self.clock.now():
                self.due += self.interval

    @property
    def busy(self) -> bool:
        return self.task is not None


async def drive(clock: FakeClock, coro: Coroutine[Any, Any, T], jobs: Inventories, step: float = 1.0) -> T:
    """Run `coro` (and any inventory that falls due meanwhile), moving the clock `step` seconds whenever something
    sleeps on it (the rate budget)."""
    task = asyncio.ensure_future(coro)
    jobs.poll()
    while not task.done() or jobs.busy:
        await asyncio.sleep(0.001)
        jobs.poll()
        if (not task.done() or jobs.busy) and clock.waiting:
            await clock.advance(step)
            jobs.poll()
    return task.result()


class Counted:
    """The daemon's Rutter client, counting status and connection fetches by who asked (diagnostics only)."""

    def __init__(self, inner: Any, caller: str, counts: Counter[str]) -> None:
        self._inner, self._caller, self._counts = inner, caller, counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _count(self, what: str, kwargs: dict[str, Any]) -> None:
        self._counts[f"{what} by {self._caller}{' (refresh)' if kwargs.get('background') else ''}"] += 1

    async def fetch_status(self, token: str, **kwargs: Any) -> Any:
        self._count("status", kwargs)
        return await self._inner.fetch_status(token, **kwargs)

    async def fetch_connection(self, token: str, **kwargs: Any) -> Any:
        self._count("connection", kwargs)
        return await self._inner.fetch_connection(token, **kwargs)


async def run_daemon(args: argparse.Namespace, work: Path, sim_config: SimulatorConfig) -> dict[str, Any]:
    clock = FakeClock()
    port = common.free_port()
    config = SimulatorConfig(
        **{**sim_config_kwargs(sim_config), "webhook_url": f"http://{common.HOST}:{port}/webhooks/rutter"}
    )
    sim = await Simulator.start(config, clock)
    settings = Settings.model_validate({
        "rutter_client_id": config.client_id, "rutter_client_secret": config.client_secret,
        "rutter_api_url": sim.url, "monitor_database_url": f"sqlite+aiosqlite:///{work}/economy.db",
        "monitor_host": common.HOST, "monitor_port": port,
    })  # fmt: skip
    daemon = Daemon(settings, clock=clock, schedule=False)
    running = await start(daemon)
    interval = settings.monitor_inventory_interval
    detection = Detection(interval)
    started = time.perf_counter()
    try:
        detection.observe(clock.now(), truth(sim), lambda cid: None)
        callers: Counter[str] = Counter()
        daemon.poller._api = Counted(daemon.poller._api, "poller", callers)  # type: ignore[attr-defined]
        daemon.processor._rutter = Counted(daemon.processor._rutter, "webhook", callers)  # type: ignore[attr-defined]
        inventories = Inventories(clock, daemon.poller.inventory, interval)
        t0 = clock.now()
        ticks = int(args.minutes * 60 / TICK)
        for k in range(ticks + 1):
            target = t0 + timedelta(seconds=k * TICK)
            if clock.now() < target:
                await clock.advance((target - clock.now()).total_seconds())
            await sim.step()
            await drive(clock, daemon.processor.drain(), inventories)
            await drive(clock, daemon.poller.refresh_statuses(), inventories)

            def seen(cid: str) -> Health | None:
                state = daemon.fleet.get(cid)
                return state.health if state is not None else None

            detection.observe(clock.now(), truth(sim), seen)
        stats = sim.stats.as_dict()
        deliveries = sim.webhooks.stats
        return {
            "requests": stats["total"], "by_endpoint": stats["by_endpoint"], "rate_limited": stats["rate_limited"],
            "max_in_window": stats["max_in_window"], "detection": detection, "now": clock.now(),
            "webhooks": f"{deliveries.delivered} delivered, {deliveries.dropped} dropped, "
                        f"{deliveries.duplicated} sent twice",
            "seconds": time.perf_counter() - started, "passes": inventories.passes, "callers": callers,
        }  # fmt: skip
    finally:
        await running.stop()
        await sim.stop()


async def run_naive(args: argparse.Namespace, sim_config: SimulatorConfig) -> dict[str, Any]:
    clock = FakeClock()
    sim = await Simulator.start(SimulatorConfig(**{**sim_config_kwargs(sim_config), "webhook_url": None}), clock)
    detection = Detection(timedelta(minutes=5))
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            exporter = NaiveExporter(session, sim.base_url, sim_config.client_id, sim_config.client_secret)
            detection.observe(clock.now(), truth(sim), lambda cid: None)
            for second in range(int(args.minutes * 60) + 1):
                if second:
                    await clock.advance(1.0)
                if second % int(TICK) == 0:
                    await sim.step()
                await exporter.tick(clock.now())
                if second % int(TICK) == 0:
                    detection.observe(clock.now(), truth(sim), exporter.health.get)
        stats = sim.stats.as_dict()
        return {
            "requests": stats["total"], "by_endpoint": stats["by_endpoint"], "rate_limited": stats["rate_limited"],
            "max_in_window": stats["max_in_window"], "detection": detection, "now": clock.now(),
            "seconds": time.perf_counter() - started,
        }  # fmt: skip
    finally:
        await sim.stop()


def sim_config_kwargs(config: SimulatorConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    configure("error")
    common.banner(f"API economy: {args.connections} connections, {args.minutes:g} simulated minutes")
    work = common.workdir("economy")
    sim_config = SimulatorConfig(
        connections=args.connections, seed=args.seed, step_interval=None, drop_rate=0.02, duplicate_rate=0.02
    )
    daemon = await run_daemon(args, work, sim_config)
    print(f"daemon done in {daemon['seconds']:.0f} s of wall time", flush=True)
    naive = await run_naive(args, sim_config)
    print(f"naive exporter done in {naive['seconds']:.0f} s of wall time", flush=True)
    rows = []
    for name, r in (("rutter-monitor", daemon), ("naive exporter (baseline)", naive)):
        endpoints = ", ".join(f"{k.split(' ', 1)[-1]} {v}" for k, v in sorted(r["by_endpoint"].items()))
        rows.append([name, r["requests"], common.ratio(r["requests"], naive["requests"]), endpoints,
                     r["max_in_window"], r["rate_limited"], r["detection"].late(r["now"])])  # fmt: skip
    print()
    print(common.table(["client", "Rutter requests", "vs naive", "by endpoint", "max in 10 s", "429s",
                        "changes late or missed"], rows))  # fmt: skip
    print(f"\ndaemon detection: {daemon['detection'].summary(daemon['now'])}")
    print(f"naive detection:  {naive['detection'].summary(naive['now'])}")
    for line in daemon["detection"].late_ones:
        print(f"  daemon late: {line}")
    print(f"daemon fetches by caller: {dict(sorted(daemon['callers'].items()))}")
    if daemon["detection"].late_ones:
        print(f"  daemon inventory passes: {', '.join(daemon['passes'])}")
    print(f"changes: {dict(daemon['detection'].kinds)}; webhooks: {daemon['webhooks']}")
    share = daemon["requests"] / naive["requests"]
    same = daemon["detection"].late(daemon["now"]) == 0
    print(f"\ntarget <= {TARGET_SHARE:.0%} of the naive exporter's requests: {share:.1%} "
          f"({common.verdict(share <= TARGET_SHARE)}); every change seen within one inventory interval: "
          f"{common.verdict(same)}")  # fmt: skip
    if args.keep:
        print(f"\nscratch folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

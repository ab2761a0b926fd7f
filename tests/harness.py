"""An in-process rig: the Rutter simulator and the daemon on loopback, sharing one FakeClock. Tests drive time and
the poll jobs by hand and read what a user reads: /metrics text, the JSON API."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import Daemon, Running, start
from monitor.clock import FakeClock
from monitor.config import Settings
from monitor.simulator import Simulator, SimulatorConfig

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@dataclass
class Rig:
    clock: FakeClock
    sim: Simulator
    daemon: Daemon
    running: Running
    http: aiohttp.ClientSession

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.http.get(f"{self.running.admin_url}/metrics") as resp:
            assert resp.status == 200
            return parse_metrics(await resp.text())

    async def sample(self, name: str, **labels: str) -> float:
        """One sample's value; 0 when the series does not exist."""
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    async def api(self, path: str) -> Any:
        async with self.http.get(f"{self.running.admin_url}{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def deliver(self) -> None:
        """Send every webhook the simulator has queued, then process the daemon's inbox."""
        await self.sim.step()
        await self.sim.drain_webhooks()
        await self.daemon.processor.drain()

    async def inventory(self) -> None:
        assert await self.daemon.poller.inventory()

    async def refresh(self) -> int:
        return await self.drive(self.daemon.poller.refresh_statuses())

    async def drive(self, coro: Coroutine[Any, Any, T], step: float = 1.0, limit: float = 3600.0) -> T:
        """Run `coro`, moving the FakeClock `step` seconds whenever something waits on it (the rate budget)."""
        task = asyncio.ensure_future(coro)
        moved = 0.0
        while not task.done():
            await asyncio.sleep(0.002)
            if task.done() or not self.clock.waiting:
                continue
            if moved >= limit:
                task.cancel()
                raise AssertionError(f"still waiting after {limit} s of clock time")
            await self.clock.advance(step)
            moved += step
        return task.result()

    async def connection(self, connection_id: str) -> Any:
        return await self.api(f"/api/v1/connections/{connection_id}")


@asynccontextmanager
async def rig(
    tmp_path: Path, *, sim: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
) -> AsyncIterator[Rig]:
    """Start simulator + daemon (no scheduler: tests call the jobs) on free loopback ports."""
    clock = FakeClock()
    port = free_port()
    sim_config = SimulatorConfig(
        **{
            "connections": 0,
            "evolve": False,
            "step_interval": None,
            "webhook_url": f"http://127.0.0.1:{port}/webhooks/rutter",
            **(sim or {}),
        }
    )
    simulator = await Simulator.start(sim_config, clock)
    values: dict[str, Any] = {
        "rutter_client_id": sim_config.client_id,
        "rutter_client_secret": sim_config.client_secret,
        "rutter_api_url": simulator.url,
        "monitor_database_url": f"sqlite+aiosqlite:///{tmp_path}/monitor.db",
        "monitor_host": "127.0.0.1",
        "monitor_port": port,
        **(settings or {}),
    }
    daemon = Daemon(Settings.model_validate(values), clock=clock, schedule=False)
    running = await start(daemon)
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(clock, simulator, daemon, running, http)
    finally:
        await running.stop()
        await simulator.stop()

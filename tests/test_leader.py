"""Several replicas on one store: all accept webhooks, one leads (processes, polls, notifies), a standby takes over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from monitor.app import Daemon, Running, start
from monitor.clock import FakeClock, SystemClock
from monitor.config import Settings
from monitor.leader import LOCK_KEY
from monitor.rutter.signature import sign
from monitor.simulator import Simulator, SimulatorConfig
from monitor.store.sql import normalize_url
from tests.harness import free_port, parse_metrics


def daemon(sim: Simulator, database_url: str, clock: FakeClock) -> Daemon:
    settings = Settings.model_validate(
        {
            "rutter_client_id": sim.config.client_id,
            "rutter_client_secret": sim.config.client_secret,
            "rutter_api_url": sim.url,
            "monitor_database_url": database_url,
            "monitor_host": "127.0.0.1",
            "monitor_port": free_port(),
        }
    )
    return Daemon(settings, clock=clock, schedule=False)


@asynccontextmanager
async def replicas(database_url: str) -> AsyncIterator[tuple[Simulator, Running, Running]]:
    """A simulator and two replicas started one after the other on the same store."""
    clock = FakeClock()
    sim = await Simulator.start(SimulatorConfig(connections=0, evolve=False, step_interval=None), SystemClock())
    started: list[Running] = []
    try:
        started.append(await start(daemon(sim, database_url, clock)))
        started.append(await start(daemon(sim, database_url, clock)))
        yield sim, started[0], started[1]
    finally:
        for running in reversed(started):
            if not running.daemon.stopped:
                await running.stop()
        await sim.stop()


async def metrics(http: aiohttp.ClientSession, r: Running) -> dict[Any, float]:
    async with http.get(f"{r.admin_url}/metrics") as resp:
        return parse_metrics(await resp.text())


async def takeover(database_url: str) -> None:
    """Two replicas: the second stands by, stores webhooks the leader processes, and leads once the first stops."""
    async with replicas(database_url) as (sim, leader, standby), aiohttp.ClientSession() as http:
        conn = sim.model.create("SHOPIFY")
        assert (leader.daemon.leading, standby.daemon.leading) == (True, False)
        assert await leader.daemon.poller.inventory()
        m1, m2 = await metrics(http, leader), await metrics(http, standby)
        assert m1[("rutter_monitor_leader", ())] == 1
        assert m2[("rutter_monitor_leader", ())] == 0
        assert not [k for k in m2 if k[0] == "rutter_connections"]
        assert [k for k in m1 if k[0] == "rutter_connections"]
        sim.model.make_ready(conn.id, webhook=False)
        body = b'{"type":"CONNECTION","code":"INITIAL_UPDATE","connection_id":"%s","access_token":"%s"}' % (
            conn.id.encode(),
            conn.access_token.encode(),
        )
        headers = {"X-Rutter-Signature": sign(body, sim.config.client_secret)}
        async with http.post(f"{standby.url}/webhooks/rutter", data=body, headers=headers) as resp:
            assert resp.status == 200
        assert await leader.daemon.processor.drain() == 1
        assert leader.daemon.fleet.get(conn.id).lifecycle_stage == "ongoing"  # type: ignore[union-attr]
        assert await standby.daemon.try_lead() is False
        await leader.stop()
        assert await standby.daemon.try_lead() is True
        assert standby.daemon.fleet.get(conn.id).lifecycle_stage == "ongoing"  # type: ignore[union-attr]
        assert (await metrics(http, standby))[("rutter_monitor_leader", ())] == 1


async def test_sqlite_replicas_on_one_file_elect_one_leader(tmp_path: Path) -> None:
    """On one SQLite file, a second process stands by instead of racing the first, and leads after it."""
    await takeover(f"sqlite+aiosqlite:///{tmp_path}/shared.db")


@pytest.mark.postgres
async def test_postgres_replicas_elect_one_leader(postgres_database_url: str) -> None:
    """On PostgreSQL, an advisory lock makes exactly one replica lead; another leads once it is gone."""
    await takeover(postgres_database_url)


@pytest.mark.postgres
async def test_a_leader_whose_lock_connection_dies_stops_and_a_standby_takes_over(postgres_database_url: str) -> None:
    """If the server drops the leader's lock session, the leader stops acting and the standby becomes leader."""
    admin = create_async_engine(normalize_url(postgres_database_url))
    try:
        async with replicas(postgres_database_url) as (_, leader, standby):
            assert (leader.daemon.leading, standby.daemon.leading) == (True, False)
            async with admin.connect() as c:
                await c.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND objid = :key AND granted"
                    ),
                    {"key": LOCK_KEY},
                )
            assert await leader.daemon.try_lead() is False
            assert leader.daemon.leadership_lost.is_set()
            assert await standby.daemon.try_lead() is True
    finally:
        await admin.dispose()

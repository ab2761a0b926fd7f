"""`rutter-monitor run` as a real subprocess: durability across kill -9, group commit, a clean SIGTERM during a
flood, no leaked secret, config errors, and 503 while the store is down. The simulator runs in this process on the
system clock (the daemon's); readiness and processing are awaited by polling with a deadline, never by sleeping."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from monitor.clock import SystemClock
from monitor.simulator import InitialMix, SimConnection, Simulator, SimulatorConfig
from monitor.simulator.views import entity_webhook
from tests.harness import parse_metrics
from tests.procs import (
    DaemonProcess,
    clean_env,
    daemon_process,
    inbox,
    post_webhook,
    run_cli,
    silent_server,
)

CLIENT_ID = "proc-client-id"
CLIENT_SECRET = "proc-client-secret-7f3a9c"


@asynccontextmanager
async def simulator(**config: Any) -> AsyncIterator[Simulator]:
    """The simulator on the system clock; nothing moves unless the test drives it."""
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "connections": 0,
        "evolve": False,
        "step_interval": None,
        **config,
    }
    sim = await Simulator.start(SimulatorConfig(**values), SystemClock())
    try:
        yield sim
    finally:
        await sim.stop()


def rutter_settings(api_url: str, **more: str) -> dict[str, str]:
    return {"rutter_client_id": CLIENT_ID, "rutter_client_secret": CLIENT_SECRET, "rutter_api_url": api_url, **more}


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def get_text(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics(http: aiohttp.ClientSession, d: DaemonProcess) -> Samples:
    status, text = await get_text(http, d.url + "/metrics")
    assert status == 200
    return parse_metrics(text)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    """Poll `check` until it holds, failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def connections(http: aiohttp.ClientSession, d: DaemonProcess) -> dict[str, Any]:
    page = await get_json(http, d.url + "/api/v1/connections?limit=1000&include_deleted=true")
    assert page["next_cursor"] is None
    return {c["id"]: c for c in page["items"]}


async def histories(http: aiohttp.ClientSession, d: DaemonProcess, ids: list[str]) -> dict[str, list[Any]]:
    return {cid: (await get_json(http, f"{d.url}/api/v1/connections/{cid}"))["transitions"] for cid in ids}


async def transitions_counted(http: aiohttp.ClientSession, d: DaemonProcess) -> float:
    m = await metrics(http, d)
    stage = total(m, "rutter_connection_stage_transitions_total")
    return stage + total(m, "rutter_connection_health_transitions_total")


@pytest.mark.timeout(90)
async def test_acknowledged_webhooks_survive_kill_9_and_the_restart_records_no_transition(tmp_path: Path) -> None:
    """Webhooks answered 200 and then hit by kill -9 before processing are processed after a restart, and neither
    that restart nor a later one records a transition."""
    async with simulator() as sim, aiohttp.ClientSession() as http:
        model = sim.model
        expected: dict[str, tuple[str, str, str | None]] = {}
        for platform in ("SHOPIFY", "QUICKBOOKS", "XERO", "NETSUITE"):
            syncing = model.create(platform, batches=2)
            model.make_ready(syncing.id)  # INITIAL_UPDATE, two history batches to go
            expected[syncing.id] = ("historical_sync", "healthy", None)
            disabled = model.create(platform)
            model.make_ready(disabled.id, webhook=False)
            model.disable(disabled.id, "SHOP_NOT_FOUND")  # CONNECTION_DISABLED
            expected[disabled.id] = ("ongoing", "disabled", "SHOP_NOT_FOUND")
            revoked = model.create(platform)
            model.make_ready(revoked.id, webhook=False)
            model.needs_update(revoked.id)  # CONNECTION_NEEDS_UPDATE
            expected[revoked.id] = ("ongoing", "needs_update", None)
        bodies = [json.dumps(w.payload).encode() for w in model.take_webhooks()]
        assert len(bodies) == len(expected) == 12
        db = tmp_path / "monitor.db"

        # 1. Rutter hangs: the processor waits on the status fetch every unknown connection needs.
        with silent_server() as hanging_api:
            async with daemon_process(tmp_path, rutter_settings(hanging_api), log_name="first.log") as first:
                await first.start()
                await first.wait_healthy(http)
                statuses = await asyncio.gather(*(post_webhook(http, first.url, b, CLIENT_SECRET) for b in bodies))
                assert statuses == [200] * len(bodies)
                rows = inbox(db)
                await first.kill()  # kill -9, right after seeing the rows durable and unprocessed
                assert first.returncode == -9
        assert sorted(r.body_hash for r in rows) == sorted(hashlib.sha256(b).hexdigest() for b in bodies)
        assert not any(r.processed for r in rows), "processed before the kill: the test proves nothing"

        # 2. Restart against a Rutter that answers: every acknowledged event is processed, silently.
        ids = sorted(expected)
        async with daemon_process(tmp_path, rutter_settings(sim.url), log_name="second.log") as second:
            await second.start()
            await second.wait_ready(http)

            async def all_tracked() -> bool:
                seen = await connections(http, second)
                got = {
                    cid: (c["lifecycle_stage"], c["health"], c["disabled_reason"])
                    for cid, c in seen.items()
                    if cid in expected
                }
                return got == expected and not any(not r.processed for r in inbox(db))

            await eventually(all_tracked, "every connection tracked in its state and the inbox processed")
            assert await histories(http, second, ids) == {cid: [] for cid in ids}
            assert await transitions_counted(http, second) == 0
            assert total(await metrics(http, second), "rutter_monitor_inbox_pending") == 0
            assert await second.terminate(within=30) == 0

        # 3. A plain restart changes nothing either.
        async with daemon_process(tmp_path, rutter_settings(sim.url), log_name="third.log") as third:
            await third.start()
            await third.wait_ready(http)
            after = await connections(http, third)
            assert {cid: (c["lifecycle_stage"], c["health"], c["disabled_reason"]) for cid, c in after.items()} == (
                expected
            )
            assert await histories(http, third, ids) == {cid: [] for cid in ids}
            assert await transitions_counted(http, third) == 0
            assert await third.terminate(within=30) == 0


def order_bodies(conn: SimConnection, count: int, start: int = 0) -> list[bytes]:
    """`count` distinct ORDER_CREATED webhooks for one connection, as Rutter sends them."""
    now = datetime.now(UTC)
    return [json.dumps(entity_webhook(conn, "ORDER_CREATED", now, n)).encode() for n in range(start, start + count)]


@pytest.mark.timeout(60)
async def test_concurrent_webhooks_share_commits(tmp_path: Path) -> None:
    """200 concurrent webhooks are all acknowledged with fewer than 200 inbox commits (group commit)."""
    n = 200
    async with simulator() as sim:
        conn = sim.model.create("SHOPIFY")
        sim.model.make_ready(conn.id, webhook=False)
        bodies = order_bodies(conn, n)
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            daemon_process(tmp_path, rutter_settings(sim.url)) as d,
        ):
            await d.start()
            await d.wait_ready(http)
            statuses = await asyncio.gather(*(post_webhook(http, d.url, b, CLIENT_SECRET) for b in bodies))
            assert statuses == [200] * n
            m = await metrics(http, d)
            commits = m[("rutter_monitor_inbox_commits_total", ())]
            assert 1 <= commits < n, f"{commits} commits for {n} webhooks"
            assert m[("rutter_webhooks_received_total", (("code", "ENTITY"), ("outcome", "accepted")))] == n
            assert len(inbox(tmp_path / "monitor.db")) == n
            assert await d.terminate(within=30) == 0


@pytest.mark.timeout(60)
async def test_sigterm_during_a_flood_exits_cleanly_and_loses_no_acknowledged_webhook(tmp_path: Path) -> None:
    """On SIGTERM during a flood the daemon exits 0 within its shutdown timeout, every webhook it answered 200 is
    processed, and later requests get 503 or a connection error."""
    shutdown_timeout = 10.0
    async with simulator() as sim:
        sim.model.bulk_create(2, ("SHOPIFY",), mix=InitialMix.ONGOING)
        conn = sim.model.all()[0]
        numbers = itertools.count()
        # (sent after SIGTERM, answered after SIGTERM, status or "connection error", body) of every request
        outcomes: list[tuple[bool, bool, int | str, bytes]] = []
        enough = asyncio.Event()
        terminated = asyncio.Event()
        exited = asyncio.Event()

        async def flood(http: aiohttp.ClientSession, url: str) -> None:
            while not exited.is_set():
                body = order_bodies(conn, 1, next(numbers))[0]
                sent_after = terminated.is_set()
                outcome: int | str
                try:
                    outcome = await post_webhook(http, url, body, CLIENT_SECRET)
                except (aiohttp.ClientConnectionError, TimeoutError):
                    outcome = "connection error"
                outcomes.append((sent_after, terminated.is_set(), outcome, body))
                if outcome == "connection error":
                    return  # the listener is gone: this sender is done
                if sum(o[2] == 200 for o in outcomes) >= 100:
                    enough.set()

        async with (
            aiohttp.ClientSession() as http,
            daemon_process(tmp_path, rutter_settings(sim.url, monitor_shutdown_timeout=f"{shutdown_timeout:g}s")) as d,
        ):
            await d.start()
            await d.wait_ready(http)
            workers = [asyncio.create_task(flood(http, d.url)) for _ in range(8)]
            try:
                await asyncio.wait_for(enough.wait(), 30)
                terminated.set()
                code = await d.terminate(within=shutdown_timeout)
            finally:
                exited.set()
                await asyncio.gather(*workers)
            assert code == 0, d.logs()
        assert {o for _, after, o, _ in outcomes if not after} == {200}
        late = [o for sent_after, _, o, _ in outcomes if sent_after]
        assert late, "no request was sent after SIGTERM"
        assert set(late) <= {200, 503, "connection error"}
        rows = inbox(tmp_path / "monitor.db")
        assert [r.id for r in rows if not r.processed] == []
        acked = {hashlib.sha256(body).hexdigest() for _, _, o, body in outcomes if o == 200}
        assert acked <= {r.body_hash for r in rows}
        assert {"daemon stopped"} <= {e.get("event") for e in d.log_events()}


def disable_body(connection_id: str, access_token: str) -> bytes:
    return json.dumps(
        {
            "type": "CONNECTION",
            "code": "CONNECTION_DISABLED",
            "connection_id": connection_id,
            "access_token": access_token,
        }
    ).encode()


@pytest.mark.timeout(60)
async def test_no_secret_or_access_token_leaks_into_logs_metrics_or_api(tmp_path: Path) -> None:
    """After inventory, a disable, a needs-update, bad signatures and a failing fetch, neither the logs, /metrics,
    nor any API answer contain a secret, the Basic credentials or an access token; check-config echoes none."""
    webhook_secret = "proc-webhook-secret-51be0d"
    async with simulator() as sim, aiohttp.ClientSession() as http:
        model = sim.model
        disabled = model.create("SHOPIFY", store_name="Leaky Shop")
        revoked = model.create("XERO")
        syncing = model.create("QUICKBOOKS", batches=1)
        for c in (disabled, revoked):
            model.make_ready(c.id, webhook=False)
        settings = rutter_settings(
            sim.url,
            rutter_webhook_secret=f"{webhook_secret},{CLIENT_SECRET}",  # a rotation: both sign
            monitor_log_level="debug",
        )
        async with daemon_process(tmp_path, settings) as d:
            sim.set_webhook_url(f"{d.url}/webhooks/rutter")
            await d.start()
            await d.wait_ready(http)
            model.disable(disabled.id, "SHOP_IS_LOCKED")
            model.needs_update(revoked.id)
            model.make_ready(syncing.id)
            model.entity(syncing.id, "INVOICE_CREATED")
            await sim.drain_webhooks()
            forged = disable_body(revoked.id, revoked.access_token)
            assert await post_webhook(http, d.url, forged, "not-the-secret") == 401
            assert await post_webhook(http, d.url, forged, None) == 401
            assert await post_webhook(http, d.url, b'{"access_token": "x"', webhook_secret) == 400
            stranger_token = "tok-unknown-3c9e41d7"
            stranger = disable_body("stranger-1", stranger_token)
            assert await post_webhook(http, d.url, stranger, webhook_secret) == 200

            async def scenario_done() -> bool:
                seen = await connections(http, d)
                return (
                    seen.get(disabled.id, {}).get("disabled_reason") == "SHOP_IS_LOCKED"
                    and seen.get(revoked.id, {}).get("health") == "needs_update"
                    and seen.get(syncing.id, {}).get("lifecycle_stage") == "historical_sync"
                    and all(r.processed for r in inbox(tmp_path / "monitor.db"))
                )

            await eventually(scenario_done, "the scenario processed")
            outputs: dict[str, str] = {}
            for path in ("/metrics", "/readyz", "/healthz", "/api/v1/alerts", "/api/v1/connections?include_deleted=1"):
                outputs[path] = (await get_text(http, d.url + path))[1]
            for cid in await connections(http, d):
                path = f"/api/v1/connections/{cid}"
                outputs[path] = (await get_text(http, d.url + path))[1]
            assert await d.terminate(within=30) == 0
            outputs["logs"] = d.logs()
        events = {e.get("event") for e in d.log_events()}
        assert {"webhook accepted", "status fetch failed", "transition"} <= events, "the scenario logged too little"

        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        secrets = {
            "client secret": CLIENT_SECRET,
            "webhook secret": webhook_secret,
            "basic auth": basic,
            "stranger's token": stranger_token,
        }
        secrets |= {f"token of {c.id}": c.access_token for c in (disabled, revoked, syncing)}
        for where, text in outputs.items():
            for what, secret in secrets.items():
                assert secret not in text, f"{what} found in {where}"

        # check-config with bad values lists them, and still shows no secret
        env = clean_env(
            **rutter_settings(sim.url, rutter_webhook_secret=webhook_secret),
            monitor_port="abc",
            monitor_rate_limit="-1",
        )
        code, out = await run_cli("check-config", env=env, cwd=tmp_path)
        assert code != 0
        assert "MONITOR_PORT" in out
        assert "MONITOR_RATE_LIMIT" in out
        for what, secret in secrets.items():
            assert secret not in out, f"{what} echoed by check-config"


async def test_config_errors_name_every_bad_setting(tmp_path: Path) -> None:
    """check-config names both bad settings and exits non-zero, passes good settings, and run without
    RUTTER_CLIENT_ID refuses to start, naming it."""
    good = rutter_settings("http://127.0.0.1:9/versioned", monitor_database_url=f"sqlite:///{tmp_path}/m.db")
    bad = clean_env(**good, monitor_port="abc", monitor_inventory_interval="5x")
    code, out = await run_cli("check-config", env=bad, cwd=tmp_path)
    assert code != 0
    assert "MONITOR_PORT" in out
    assert "MONITOR_INVENTORY_INTERVAL" in out

    code, out = await run_cli("check-config", env=clean_env(**good), cwd=tmp_path)
    assert (code, out.strip()) == (0, "configuration OK")

    no_id = clean_env(**{k: v for k, v in good.items() if k != "rutter_client_id"})
    code, out = await run_cli("run", env=no_id, cwd=tmp_path)
    assert code != 0
    assert "RUTTER_CLIENT_ID" in out
    assert not (tmp_path / "m.db").exists(), "run touched the store although it refused to start"


@pytest.mark.postgres
@pytest.mark.timeout(60)
async def test_store_outage_answers_503_and_recovers(
    tmp_path: Path, postgres_cluster: Any, postgres_database_url: str
) -> None:
    """While the PostgreSQL store refuses connections, webhooks get 503 and /readyz is 503; once it is back,
    webhooks get 200 again and /readyz is green."""
    database = make_url(postgres_database_url).database
    async with simulator() as sim, aiohttp.ClientSession() as http:
        conn = sim.model.create("SHOPIFY")
        bodies = iter(order_bodies(conn, 10))
        settings = rutter_settings(sim.url, monitor_database_url=postgres_database_url)
        async with daemon_process(tmp_path, settings) as d:
            await d.start()
            await d.wait_ready(http)
            assert await post_webhook(http, d.url, next(bodies), CLIENT_SECRET) == 200

            # The outage: nobody may connect to the database, and the daemon's open sessions are cut.
            postgres_cluster.psql(
                f"ALTER DATABASE {database} ALLOW_CONNECTIONS false; "
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
            )
            try:
                assert await post_webhook(http, d.url, next(bodies), CLIENT_SECRET) == 503
                assert await post_webhook(http, d.url, next(bodies), CLIENT_SECRET) == 503
                assert (await get_text(http, d.url + "/readyz"))[0] == 503
                assert (await get_text(http, d.url + "/healthz"))[0] == 200
            finally:
                postgres_cluster.psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")

            assert await post_webhook(http, d.url, next(bodies), CLIENT_SECRET) == 200
            assert (await get_text(http, d.url + "/readyz"))[0] == 200
            m = await metrics(http, d)
            assert m[("rutter_webhooks_received_total", (("code", "ENTITY"), ("outcome", "unavailable")))] == 2
            assert m[("rutter_webhooks_received_total", (("code", "ENTITY"), ("outcome", "accepted")))] == 2
            assert await d.terminate(within=30) == 0

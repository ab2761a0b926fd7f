"""Alerting end to end in one process: the simulator as Rutter, the daemon, the local fake Slack (real slack_sdk) and
a real Alertmanager. Time is a FakeClock started at the wall clock's now (Alertmanager judges endsAt by wall time);
evaluations are run by hand (`tick`), changes are evaluated as they are committed."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.alerting.alertmanager import AlertmanagerPusher, AlertmanagerSink
from monitor.alerting.messages import IncidentView
from monitor.alerting.rules import AlertName, Severity
from monitor.app import Daemon, start
from monitor.clock import FakeClock
from monitor.config import Settings
from monitor.domain import Health, LifecycleStage
from monitor.simulator import Simulator, SimulatorConfig
from tests.alertmanager import active_alerts
from tests.fakeslack import DEFAULT_TOKEN, FakeSlack
from tests.harness import Rig, free_port


@dataclass
class Stack:
    """One simulator, one fake Slack and one database; daemons can be stopped and started on them."""

    clock: FakeClock
    sim: Simulator
    slack: FakeSlack
    http: aiohttp.ClientSession
    values: dict[str, Any]
    console: io.StringIO | None = None
    rig: Rig | None = None

    async def start(self) -> Rig:
        daemon = Daemon(Settings.model_validate(self.values), clock=self.clock, schedule=False, console=self.console)
        self.rig = Rig(self.clock, self.sim, daemon, await start(daemon), self.http)
        return self.rig

    async def stop(self) -> None:
        if self.rig is not None:
            await self.rig.running.stop()
            self.rig = None

    async def restart(self) -> Rig:
        await self.stop()
        return await self.start()


@asynccontextmanager
async def stack(
    tmp_path: Path, *, mode: str = "webhook", settings: dict[str, Any] | None = None, console: bool = False
) -> AsyncIterator[Stack]:
    """Start everything on loopback; `mode` is the Slack target: webhook, bot or none."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    port = free_port()
    async with FakeSlack(clock=clock) as slack:
        sim_config = SimulatorConfig(
            connections=0, evolve=False, step_interval=None, webhook_url=f"http://127.0.0.1:{port}/webhooks/rutter"
        )
        simulator = await Simulator.start(sim_config, clock)
        target: dict[str, Any] = {
            "webhook": {"slack_webhook_url": slack.webhook_url},
            "bot": {"slack_bot_token": DEFAULT_TOKEN, "slack_channel": "#alerts", "slack_api_url": slack.api_url},
            "none": {},
        }[mode]
        values = {
            "rutter_client_id": sim_config.client_id,
            "rutter_client_secret": sim_config.client_secret,
            "rutter_api_url": simulator.url,
            "monitor_database_url": f"sqlite+aiosqlite:///{tmp_path}/monitor.db",
            "monitor_host": "127.0.0.1",
            "monitor_port": port,
            **target,
            **(settings or {}),
        }
        try:
            async with aiohttp.ClientSession() as http:
                st = Stack(clock, simulator, slack, http, values, io.StringIO() if console else None)
                await st.start()
                try:
                    yield st
                finally:
                    await st.stop()
        finally:
            await simulator.stop()


def rig_of(st: Stack) -> Rig:
    assert st.rig is not None
    return st.rig


async def settle(r: Rig, limit: int = 60) -> None:
    """Evaluate committed changes and deliver the whole outbox, one second of clock per paced message."""
    engine = r.daemon.engine
    for _ in range(limit):
        await engine.evaluate_changed()
        await engine.deliver_due()
        if (await r.daemon.store.outbox_backlog())[0] == 0:
            return
        await r.clock.advance(1)
    raise AssertionError("the outbox did not drain")


async def ready_connection(r: Rig, platform: str, **create: Any) -> str:
    conn = r.sim.model.create(platform, **create)
    r.sim.model.make_ready(conn.id, webhook=False)
    return conn.id


async def test_disable_then_reconnect_gives_one_message_each(tmp_path: Path) -> None:
    """A disable webhook reaches Slack within 1 s naming connection, platform and reason; the reconnect gives one
    resolve with the duration, after the hold-down."""
    async with stack(tmp_path, settings={"monitor_resolve_hold_down": "2m"}) as st:
        r = rig_of(st)
        cid = await ready_connection(r, "XERO", store_name="Harbour Books")
        await r.inventory()
        await r.refresh()
        r.sim.model.disable(cid, "SHOP_PAYMENT_REQUIRED")
        started = time.monotonic()
        await r.sim.drain_webhooks()
        (fired,) = await st.slack.wait_for_messages(1, within=1.0)
        assert time.monotonic() - started < 1.0
        for part in (cid, "XERO", "Harbour Books", "SHOP_PAYMENT_REQUIRED", "Connection disabled"):
            assert part in fired.text
        (alert,) = (await r.api("/api/v1/alerts"))["items"]
        assert (alert["connection_id"], alert["alert"], alert["severity"], alert["state"]) == (
            cid,
            "connection_disabled",
            "critical",
            "firing",
        )
        assert alert["reason"] == "SHOP_PAYMENT_REQUIRED"

        await r.clock.advance(600)
        r.sim.model.reconnect(cid)
        await r.deliver()
        await r.daemon.engine.evaluate_changed()
        assert [a["state"] for a in (await r.api("/api/v1/alerts"))["items"]] == ["resolving"]
        await r.clock.advance(119)
        await r.daemon.engine.tick()
        await settle(r)
        assert len(st.slack.messages) == 1
        await r.clock.advance(1)
        await r.daemon.engine.tick()
        await settle(r)
        _first, resolved = st.slack.messages
        assert resolved.text.startswith("[RESOLVED] Connection disabled")
        assert "Lasted 10 min" in resolved.text
        assert cid in resolved.text
        assert (await r.api("/api/v1/alerts"))["items"] == []
        sent = await r.sample("rutter_monitor_notifications_total", channel="default", outcome="sent")
        assert sent == 2
        assert await r.sample("rutter_monitor_outbox_pending") == 0


async def test_duplicate_disables_and_a_restart_still_give_one_message(tmp_path: Path) -> None:
    """Five deliveries of the same disable, then a daemon restart on the same database: one message in all."""
    async with stack(tmp_path) as st:
        r = rig_of(st)
        cid = await ready_connection(r, "SHOPIFY")
        await r.inventory()
        r.sim.model.disable(cid, "SHOP_IS_LOCKED")
        for _ in range(4):
            r.sim.model.emit(cid, "CONNECTION_DISABLED")
        await r.deliver()
        await settle(r)
        assert await r.sample("rutter_webhooks_received_total", code="CONNECTION_DISABLED", outcome="duplicate") == 4
        r = await st.restart()
        await r.inventory()
        await r.refresh()
        await r.clock.advance(60)
        await r.daemon.engine.tick()
        await settle(r)
        assert len(st.slack.messages) == 1
        assert [a["connection_id"] for a in (await r.api("/api/v1/alerts"))["items"]] == [cid]
        firing = "rutter_monitor_alerts_firing"
        assert await r.sample(firing, alert="connection_disabled", severity="critical", platform="SHOPIFY") == 1
        assert await r.sample(firing, alert="connection_unhealthy", severity="warning", platform="SHOPIFY") == 0


async def test_initial_sync_stall_fires_at_its_threshold_with_a_per_platform_override(tmp_path: Path) -> None:
    """With no event at all, the stall fires at 6 h and not a second earlier; NETSUITE's override (24 h) applies
    to NETSUITE only; the stall resolves when the connection becomes ready."""
    settings = {
        "monitor_group_wait": "0s",
        "monitor_resolve_hold_down": "1m",
        "alerts": {"platforms": {"NETSUITE": {"initial_sync_stall_after": "24h"}}},
    }
    async with stack(tmp_path, settings=settings) as st:
        r = rig_of(st)
        shop = r.sim.model.create("SHOPIFY").id
        suite = r.sim.model.create("NETSUITE").id
        await r.inventory()
        await r.clock.advance(6 * 3600 - 1)
        await r.daemon.engine.tick()
        await settle(r)
        assert st.slack.messages == []
        assert (await r.api("/api/v1/connections?stalled=true"))["items"] == []
        await r.clock.advance(1)
        await r.daemon.engine.tick()
        await settle(r)
        (stalled,) = st.slack.messages
        assert "Initial sync stalled" in stalled.text
        assert shop in stalled.text
        assert [c["id"] for c in (await r.api("/api/v1/connections?stalled=true"))["items"]] == [shop]

        await r.clock.advance(18 * 3600 - 10)
        await r.daemon.engine.tick()
        assert len(st.slack.messages) == 1
        await r.clock.advance(10)
        await r.daemon.engine.tick()
        await settle(r)
        assert suite in st.slack.messages[1].text

        r.sim.model.make_ready(shop)
        await r.deliver()
        await r.clock.advance(60)
        await r.daemon.engine.tick()
        await settle(r)
        assert st.slack.messages[2].text.startswith("[RESOLVED] Initial sync stalled")
        assert shop in st.slack.messages[2].text
        stalled_now = await r.api("/api/v1/connections?stalled=true")
        assert [c["id"] for c in stalled_now["items"]] == [suite]


async def unhealthy_storm(r: Rig, count: int = 50) -> list[str]:
    """`count` SHOPIFY connections turn unhealthy within a minute; each crosses the 1 h threshold 12 s apart."""
    ids = [await ready_connection(r, "SHOPIFY") for _ in range(count)]
    await r.inventory()
    for first in range(0, count, 10):
        for cid in ids[first : first + 10]:
            r.sim.model.set_unhealthy(cid, True)
        await r.inventory()
        await r.clock.advance(12)
    await r.clock.advance(3600 - 5 * 12)
    for _ in range(5):
        await r.daemon.engine.tick()
        await settle(r)
        await r.clock.advance(12)
    return ids


def storm_size(text: str) -> int:
    """The connection count a roll-up message announces."""
    found = re.search(r" on (\d+) SHOPIFY connections", text)
    assert found is not None, text
    return int(found.group(1))


async def end_storm(r: Rig, ids: list[str]) -> None:
    for cid in ids:
        r.sim.model.set_unhealthy(cid, False)
    await r.inventory()
    await r.clock.advance(120)
    await r.daemon.engine.tick()
    await settle(r)


async def test_storm_in_webhook_mode_sends_one_message_per_doubling(tmp_path: Path) -> None:
    """50 SHOPIFY connections turning unhealthy: no per-connection message, a roll-up at 10, 20 and 40, one end."""
    async with stack(tmp_path) as st:
        r = rig_of(st)
        ids = await unhealthy_storm(r)
        texts = [m.text for m in st.slack.messages]
        assert [t.split("]")[0] for t in texts] == ["[STORM", "[STORM GROWING", "[STORM GROWING"]
        assert [storm_size(t) for t in texts] == [10, 20, 40]
        assert len((await r.api("/api/v1/alerts"))["items"]) == 50
        firing = "rutter_monitor_alerts_firing"
        assert await r.sample(firing, alert="connection_unhealthy", severity="warning", platform="SHOPIFY") == 50
        await end_storm(r, ids)
        assert len(st.slack.messages) == 4
        assert st.slack.messages[-1].text.startswith("[STORM OVER] Connection unhealthy on 50 SHOPIFY connections")
        assert not any(ids[0] in m.text for m in st.slack.messages if "Examples" not in m.text)


async def test_storm_in_bot_mode_is_one_message_updated_in_place(tmp_path: Path) -> None:
    """In bot mode the storm is one parent message, edited as it grows and on its end, with doublings threaded."""
    async with stack(tmp_path, mode="bot") as st:
        r = rig_of(st)
        ids = await unhealthy_storm(r)
        (parent,) = st.slack.parents()
        assert "on 50 SHOPIFY connections" in parent.text
        assert len(parent.edits) >= 2
        assert [storm_size(m.text) for m in st.slack.replies(parent.ts)] == [20, 40]
        await end_storm(r, ids)
        assert st.slack.parents() == [parent]
        assert parent.text.startswith("[STORM OVER]")
        assert st.slack.replies(parent.ts)[-1].text.startswith("[STORM OVER]")


async def test_bot_mode_threads_the_reason_and_edits_the_parent_on_resolve(tmp_path: Path) -> None:
    """A disable whose reason is not known within 500 ms goes out without it; the reason follows in the thread and
    in an edit of the parent; the resolve edits the parent and is threaded too."""
    settings = {"monitor_rate_limit": 1, "monitor_resolve_hold_down": "0s"}
    async with stack(tmp_path, mode="bot", settings=settings) as st:
        r = rig_of(st)
        cid = await ready_connection(r, "AMAZON")
        await r.inventory()  # spends the whole rate budget of this 10 s window
        r.sim.model.disable(cid, "SHOP_API_KEY_EXPIRED")
        await r.sim.drain_webhooks()
        (parent,) = await st.slack.wait_for_messages(1, within=2.0)
        assert "not known yet" in parent.text
        assert parent.metadata is not None
        assert parent.metadata["event_type"] == "rutter_monitor_notification"
        await r.clock.advance(10)
        await r.refresh()
        await settle(r)
        (followup,) = st.slack.replies(parent.ts)
        assert "SHOP_API_KEY_EXPIRED" in followup.text
        assert "SHOP_API_KEY_EXPIRED" in parent.text
        assert len(parent.edits) == 1
        await r.clock.advance(300)
        r.sim.model.reconnect(cid)
        await r.clock.advance(10)
        await r.deliver()
        await settle(r)
        assert st.slack.parents() == [parent]
        assert parent.text.startswith("[RESOLVED] Connection disabled")
        assert "Lasted 5 min" in parent.text
        assert [m.text.split("]")[0] for m in st.slack.replies(parent.ts)] == ["[UPDATE", "[RESOLVED"]


async def test_demo_prints_notifications_to_the_console(tmp_path: Path) -> None:
    """With no Slack target, the demo's daemon prints each notification's plain text."""
    async with stack(tmp_path, mode="none", console=True) as st:
        r = rig_of(st)
        cid = await ready_connection(r, "STRIPE")
        await r.inventory()
        r.sim.model.needs_update(cid)
        await r.deliver()
        await r.clock.advance(30)
        await r.daemon.engine.tick()
        await settle(r)
        assert st.console is not None
        out = st.console.getvalue()
        assert out.startswith("[slack] [WARNING] Connection needs update")
        assert cid in out
        assert f"https://link.rutterapi.com/connection/{cid}" in out  # the re-auth link is the action


async def wait_alerts(http: aiohttp.ClientSession, url: str, count: int) -> list[dict[str, Any]]:
    """Alertmanager's active alerts once there are `count` (pushes are asynchronous; bounded by a timeout)."""
    async with asyncio.timeout(10):
        while True:
            alerts = await active_alerts(http, url)
            if len(alerts) == count:
                return alerts
            await asyncio.sleep(0.05)  # waiting for another process, not for time to pass


@pytest.mark.prometheus
async def test_alertmanager_gets_the_incident_and_its_end(tmp_path: Path, alertmanager: str) -> None:
    """With ALERTMANAGER_URL and no Slack, the incident appears in Alertmanager with our labels and ends on resolve."""
    settings = {"alertmanager_url": alertmanager, "monitor_resolve_hold_down": "0s"}
    async with stack(tmp_path, mode="none", settings=settings) as st:
        r = rig_of(st)
        cid = await ready_connection(r, "QUICKBOOKS")
        await r.inventory()
        r.sim.model.disable(cid, "CERT_EXPIRED")
        await r.deliver()
        await r.daemon.engine.evaluate_changed()
        (alert,) = await wait_alerts(r.http, alertmanager, 1)
        assert alert["labels"] == {
            "alertname": "RutterConnectionDisabled",
            "severity": "critical",
            "platform": "QUICKBOOKS",
            "connection_id": cid,
        }
        assert "CERT_EXPIRED" in alert["annotations"]["description"]
        assert st.slack.requests == []
        r.sim.model.reconnect(cid)
        await r.deliver()
        await r.daemon.engine.evaluate_changed()
        assert await wait_alerts(r.http, alertmanager, 0) == []


@dataclass
class RecordingAlertmanager:
    """A loopback server that records the alert batches posted to /api/v2/alerts and answers `status`."""

    posts: list[list[dict[str, Any]]]
    status: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        return web.Response(status=self.status)


async def test_pusher_reposts_firing_alerts_every_resend_interval(tmp_path: Path) -> None:
    """A firing incident is pushed at once with endsAt = now + 4 x resend, re-posted each resend interval, retried
    with backoff after a failure, and posted once with its end on resolve."""
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    recorder = RecordingAlertmanager([])
    app = web.Application()
    app.router.add_post("/api/v2/alerts", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            pusher = AlertmanagerPusher(
                AlertmanagerSink(session, f"http://{host}:{port}"), clock, resend=timedelta(minutes=1)
            )
            view = IncidentView(
                connection_id="c1",
                platform="XERO",
                alert=AlertName.CONNECTION_DISABLED,
                severity=Severity.CRITICAL,
                stage=LifecycleStage.ONGOING,
                health=Health.DISABLED,
                since=clock.now(),
            )
            pusher.fire("i-1", view)
            assert await pusher.push_due()
            assert [a["endsAt"] for a in recorder.posts[-1]] == ["2026-01-01T12:04:00.000Z"]
            assert not pusher.due()
            await clock.advance(59)
            assert not pusher.due()
            await clock.advance(1)
            recorder.status = 503
            assert not await pusher.push_due()
            await clock.advance(0.5)
            assert not pusher.due()  # backing off
            await clock.advance(0.5)
            recorder.status = 200
            assert await pusher.push_due()
            assert [a["endsAt"] for a in recorder.posts[-1]] == ["2026-01-01T12:05:01.000Z"]
            await clock.advance(5)
            pusher.end("i-1", replace(view, resolved_at=clock.now()))
            assert await pusher.push_due()
            assert [a["endsAt"] for a in recorder.posts[-1]] == ["2026-01-01T12:01:06.000Z"]
            await clock.advance(600)
            assert not pusher.due()
            assert len(recorder.posts) == 4
    finally:
        await runner.cleanup()

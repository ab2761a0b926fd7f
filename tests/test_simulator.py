"""The Rutter simulator, driven over real HTTP on a FakeClock: Rutter's API contract, webhook delivery and the
fleet's evolution."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from monitor.clock import FakeClock, SystemClock
from monitor.rutter.signature import HEADER, verify
from monitor.simulator import ALL_PLATFORMS, FleetModel, InitialMix, Simulator, SimulatorConfig
from monitor.simulator.cli import config_from_args, configure_parser
from monitor.simulator.model import ALL_LIST_STATUSES
from monitor.simulator.scenario import (
    SEED_TIME_TO_HISTORICAL_COMPLETE_SECONDS,
    SEED_TIME_TO_READY_SECONDS,
    SEED_WEBHOOK_CODES,
    play,
    seed_scenario,
)

VERSION = "2024-08-31"
SECRET = "sim-client-secret"
LIST_KEYS = {"id", "access_token", "link_url", "platform", "status", "name", "created_at", "updated_at"}
ERROR_KEYS = {"error_type", "error_code", "error_message"}


@dataclass
class Receiver:
    """A webhook endpoint that records what it gets and answers with the statuses it is told to."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    signatures: list[str | None] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # consumed first; 200 once empty
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set at the first delivery

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.bodies]

    @property
    def codes(self) -> list[str]:
        return [payload["code"] for payload in self.payloads]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def handle(request: web.Request) -> web.Response:
        rec.bodies.append(await request.read())
        rec.signatures.append(request.headers.get(HEADER))
        rec.content_types.append(request.content_type)
        rec.arrived.set()
        return web.Response(status=rec.answers.pop(0) if rec.answers else 200)

    app = web.Application()
    app.router.add_post("/webhooks/rutter", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/rutter"
    yield rec
    await runner.cleanup()


StartSim = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_sim(clock: FakeClock) -> AsyncIterator[StartSim]:
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        options: dict[str, Any] = {"connections": 0, "evolve": False, "step_interval": None}
        options.update(overrides)
        sim = await Simulator.start(SimulatorConfig(**options), clock)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": aiohttp.encode_basic_auth("sim-client-id", SECRET), "X-Rutter-Version": VERSION}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield session


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with session.get(url, **kwargs) as response:
        return response.status, await response.json(), response.headers


# ------------------------------------------------------------------------------------------------- Rutter API


async def test_bad_or_missing_credentials_get_rutter_401_body(start_sim: StartSim) -> None:
    """Wrong or missing Basic credentials get 401 with Rutter's INVALID_CREDENTIALS error body and a request id."""
    sim = await start_sim()
    wrong = {"Authorization": aiohttp.encode_basic_auth("sim-client-id", "nope"), "X-Rutter-Version": VERSION}
    async with aiohttp.ClientSession() as session:
        for headers in (wrong, {"X-Rutter-Version": VERSION}, {"Authorization": "Bearer x"}):
            status, body, response_headers = await get_json(session, sim.url + "/connections", headers=headers)
            assert status == 401
            assert body == {
                "error_type": "CONNECTION_ERROR",
                "error_code": "INVALID_CREDENTIALS",
                "error_message": body["error_message"],
            }
            uuid.UUID(str(response_headers["X-Rutter-Request-ID"]))
    assert sim.stats.by_status[401] == 3


async def test_version_header_is_required_and_checked(start_sim: StartSim) -> None:
    """A missing or unknown X-Rutter-Version gets 400 with an error body; a known one is served."""
    sim = await start_sim()
    auth = {"Authorization": aiohttp.encode_basic_auth("sim-client-id", SECRET)}
    async with aiohttp.ClientSession(headers=auth) as session:
        status, body, headers = await get_json(session, sim.url + "/connections")
        assert status == 400
        assert set(body) == ERROR_KEYS
        assert "X-Rutter-Request-ID" in headers
        status, body, _ = await get_json(session, sim.url + "/connections", headers={"X-Rutter-Version": "2020-01-01"})
        assert (status, set(body)) == (400, ERROR_KEYS)
        status, body, _ = await get_json(session, sim.url + "/connections", headers={"X-Rutter-Version": VERSION})
        assert (status, body) == (200, {"connections": []})


async def test_list_items_have_exactly_rutters_fields(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    """`GET /connections` items carry exactly Rutter's eight fields, with UUIDs and Z timestamps."""
    sim = await start_sim(connections=12)
    status, body, _ = await get_json(http, sim.url + "/connections", params={"status": "any"})
    assert status == 200
    assert list(body) == ["connections"]
    assert len(body["connections"]) == 12
    for item in body["connections"]:
        assert set(item) == LIST_KEYS
        uuid.UUID(item["id"])
        uuid.UUID(item["access_token"])
        assert item["created_at"].endswith("Z")
        assert item["link_url"] == f"https://link.rutterapi.com/connection/{item['id']}"
    assert {item["platform"] for item in body["connections"]} == set(SimulatorConfig().platforms)


async def test_status_filter_selects_by_precedence(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    """Each `status` value selects its connections (disabled > needs_reauth > unhealthy > not_ready > active);
    the default is active + not_ready + unhealthy, deleted ones never show, and a bad value gets 400."""
    sim = await start_sim()
    model = sim.model
    active = model.make_ready(model.create("SHOPIFY").id, webhook=False)
    not_ready = model.create("NETSUITE")
    unhealthy = model.set_unhealthy(model.make_ready(model.create("XERO").id, webhook=False).id)
    reauth = model.needs_update(model.create("AMAZON").id, webhook=False)
    model.set_unhealthy(reauth.id)
    disabled = model.disable(model.needs_update(model.create("QUICKBOOKS").id, webhook=False).id, "SHOP_NOT_FOUND")
    gone = model.create("SHOPIFY")
    model.delete(gone.id)

    async def listed(status: str | None) -> set[str]:
        params = {"status": status} if status else {}
        code, body, _ = await get_json(http, sim.url + "/connections", params=params)
        assert code == 200
        return {item["id"] for item in body["connections"]}

    assert await listed("active") == {active.id}
    assert await listed("not_ready") == {not_ready.id}
    assert await listed("unhealthy") == {unhealthy.id}
    assert await listed("needs_reauth") == {reauth.id}
    assert await listed("disabled") == {disabled.id}
    assert await listed(None) == {active.id, not_ready.id, unhealthy.id}
    assert await listed("any") == {active.id, not_ready.id, unhealthy.id, reauth.id, disabled.id}
    code, body, _ = await get_json(http, sim.url + "/connections", params={"status": "healthy"})
    assert (code, set(body)) == (400, ERROR_KEYS)


async def test_status_endpoint_has_the_documented_shape(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    """`GET /connections/status` returns exactly the §2.1 keys, with the disabled reason and batch progress."""
    sim = await start_sim()
    conn = sim.model.create("QUICKBOOKS", batches=2)
    sim.model.make_ready(conn.id)
    sim.model.complete_batch(conn.id)
    sim.model.disable(conn.id, "SHOP_PAYMENT_REQUIRED")
    status, body, _ = await get_json(http, sim.url + "/connections/status", params={"access_token": conn.access_token})
    assert status == 200
    assert body["connection"] == {"id": conn.id, "orgId": sim.model.org_id, "platform": "QUICKBOOKS"}
    st = body["status"]
    assert set(st) == {
        "last_sync_completed_at",
        "is_healthy",
        "is_ready",
        "link_url",
        "platform",
        "created_at",
        "needs_update_status",
        "disabled_status",
        "historical_sync_status",
    }
    assert st["disabled_status"] == {"is_disabled": True, "disabled_reason": "SHOP_PAYMENT_REQUIRED"}
    assert st["needs_update_status"] == {"needs_update": False}
    assert st["is_ready"] is True
    history = st["historical_sync_status"]
    assert set(history) == {
        "historical_sync_completed",
        "total",
        "num_batches_completed",
        "synced_balance_sheets_count",
        "synced_cash_flows_count",
        "synced_income_statements_count",
        "synced_orders_count",
        "synced_transactions_count",
        "expected_entity_counts",
        "batches",
    }
    assert history["historical_sync_completed"] is False
    assert history["num_batches_completed"] == 2
    assert [b["batch_num"] for b in history["batches"]] == [1, 2, 3]
    assert {"batch_num", "progress_info", "config"} == set(history["batches"][0])
    assert history["synced_orders_count"] is None  # accounting platform: orders unsupported
    assert {"batch_num", "entity", "is_estimate", "count"} == set(history["expected_entity_counts"][0])
    for entity in history["total"].values():
        assert set(entity) == {"oldest_entity_date", "newest_entity_date", "ready", "synced_count"}


async def test_status_endpoint_rejects_unknown_deleted_and_missing_tokens(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    """An unknown or deleted access token gets 401 INVALID_CREDENTIALS; no token at all gets 400."""
    sim = await start_sim()
    conn = sim.model.create("SHOPIFY")
    sim.model.delete(conn.id)
    for token in (str(uuid.uuid4()), conn.access_token):
        for path in ("/connections/status", "/connections/access_token"):
            status, body, _ = await get_json(http, sim.url + path, params={"access_token": token})
            assert (status, body["error_code"]) == (401, "INVALID_CREDENTIALS")
    status, body, _ = await get_json(http, sim.url + "/connections/status")
    assert (status, set(body)) == (400, ERROR_KEYS)


async def test_access_token_endpoint_has_the_documented_shape(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    """`GET /connections/access_token` returns "Fetch a Connection" with names, flags and sync times."""
    sim = await start_sim()
    conn = sim.model.create("SHOPIFY", store_name="Blue Fox Goods")
    sim.model.needs_update(conn.id)
    status, body, _ = await get_json(
        http, sim.url + "/connections/access_token", params={"access_token": conn.access_token}
    )
    assert status == 200
    assert set(body["connection"]) == {
        "id",
        "store_unique_id",
        "estimated_completed_at",
        "last_sync_completed_at",
        "last_sync_started_at",
        "oldest_order_date",
        "newest_order_date",
        "disabled",
        "link_url",
        "needs_update",
        "platform",
        "initial_orders_synced_count",
        "store_domain",
        "store_name",
        "unavailable_objects",
        "created_at",
    }
    details = body["connection"]
    assert (details["id"], details["store_name"], details["needs_update"]) == (conn.id, "Blue Fox Goods", True)
    assert details["store_domain"] == "blue-fox-goods.myshopify.com"


async def test_rate_limit_answers_429_without_retry_after(
    start_sim: StartSim, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Beyond `rate_limit` requests in a sliding 10 s window come 429s with no Retry-After; the window slides."""
    sim = await start_sim(rate_limit=5)
    statuses = []
    for _ in range(7):
        async with http.get(sim.url + "/connections") as response:
            statuses.append(response.status)
            if response.status == 429:
                body = await response.json()
                assert body["error_type"] == "RATE_LIMIT_ERROR"
                assert "Retry-After" not in response.headers
                assert "X-Rutter-Request-ID" in response.headers
    assert statuses == [200] * 5 + [429] * 2
    await clock.advance(9.9)
    async with http.get(sim.url + "/connections") as response:
        assert response.status == 429
    await clock.advance(0.1)
    async with http.get(sim.url + "/connections") as response:
        assert response.status == 200
    assert sim.stats.total == 9
    assert sim.stats.rate_limited == 3
    assert sim.stats.by_endpoint["GET /connections"] == 9
    assert sim.stats.max_in_window == 8  # 429s count too: 7 at t=0 and 1 at t=9.9


async def test_retry_after_is_sent_when_configured(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    """With `retry_after` set, a 429 carries that Retry-After."""
    sim = await start_sim(rate_limit=1, retry_after=2.5)
    async with http.get(sim.url + "/connections"):
        pass
    async with http.get(sim.url + "/connections") as response:
        assert (response.status, response.headers.get("Retry-After")) == (429, "2.5")


async def test_max_in_window_is_the_busiest_sliding_window(
    start_sim: StartSim, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """`max_in_window` counts the requests of the busiest (t - 10 s, t] window, not the total."""
    sim = await start_sim()
    for _ in range(3):
        for _ in range(4):
            async with http.get(sim.url + "/connections"):
                pass
        await clock.advance(6)
    assert sim.stats.total == 12
    assert sim.stats.max_in_window == 8


# --------------------------------------------------------------------------------------------------- webhooks


async def test_webhooks_are_signed_and_shaped_like_rutters(start_sim: StartSim, receiver: Receiver) -> None:
    """Every webhook is JSON signed with the client secret; each code carries exactly its documented extras."""
    sim = await start_sim(webhook_url=receiver.url)
    model = sim.model
    conn = model.create("SHOPIFY", batches=1)
    model.make_ready(conn.id)
    model.complete_batch(conn.id)
    model.needs_update(conn.id)
    model.reconnect(conn.id)
    model.disable(conn.id, "SHOP_IS_LOCKED")
    model.entity(conn.id, "ORDER_CREATED")
    await sim.drain_webhooks()
    assert receiver.codes == [
        "INITIAL_UPDATE",
        "HISTORICAL_UPDATE",
        "CONNECTION_NEEDS_UPDATE",
        "CONNECTION_UPDATED",
        "CONNECTION_DISABLED",
        "ORDER_CREATED",
    ]
    for body, signature in zip(receiver.bodies, receiver.signatures, strict=True):
        assert verify(body, signature, [SECRET])
        assert not verify(body, signature, ["another-secret"])
    assert set(receiver.content_types) == {"application/json"}
    base = {"type": "CONNECTION", "connection_id": conn.id, "access_token": conn.access_token}
    initial, historical, needs, updated, disabled, order = receiver.payloads
    assert initial == {**base, "code": "INITIAL_UPDATE"}
    assert historical["entities_included_to_time_range"] == [
        {"platformEntity": entity, "xMonthsAgo": 24} for entity in ("ORDERS", "PRODUCTS", "CUSTOMERS")
    ]
    assert needs == {
        **base,
        "code": "CONNECTION_NEEDS_UPDATE",
        "update_url": f"https://link.rutterapi.com/connection/{conn.id}",
    }
    assert updated == {**base, "code": "CONNECTION_UPDATED", "store_unique_id": conn.store_unique_id}
    assert disabled == {**base, "code": "CONNECTION_DISABLED"}  # the reason is only in the status endpoint
    assert set(order) == {"type", "code", "connection_id", "access_token", "order"}
    assert (order["type"], order["connection_id"]) == ("ORDER", conn.id)


async def test_dropped_webhooks_never_arrive(start_sim: StartSim, receiver: Receiver) -> None:
    """`webhook=False` and a drop rate of 1 both mean the receiver never hears of the change."""
    sim = await start_sim(webhook_url=receiver.url, drop_rate=1.0)
    conn = sim.model.create("SHOPIFY")
    sim.model.make_ready(conn.id)
    sim.model.disable(conn.id, "UNKNOWN", webhook=False)
    await sim.drain_webhooks()
    assert receiver.bodies == []
    assert (sim.webhooks.stats.queued, sim.webhooks.stats.dropped) == (1, 1)
    assert sim.model.get(conn.id).disabled


async def test_duplicate_rate_sends_identical_bodies_twice(start_sim: StartSim, receiver: Receiver) -> None:
    """A duplicated webhook arrives twice, byte for byte."""
    sim = await start_sim(webhook_url=receiver.url, duplicate_rate=1.0)
    conn = sim.model.create("SHOPIFY")
    sim.model.make_ready(conn.id)
    await sim.drain_webhooks()
    assert len(receiver.bodies) == 2
    assert receiver.bodies[0] == receiver.bodies[1]
    assert sim.webhooks.stats.duplicated == 1


async def test_reordered_webhooks_arrive_after_later_ones(
    start_sim: StartSim, receiver: Receiver, clock: FakeClock
) -> None:
    """Held-back webhooks all arrive, some after webhooks queued later than them."""
    sim = await start_sim(webhook_url=receiver.url, reorder_rate=0.4, seed=7)
    conn = sim.model.make_ready(sim.model.create("SHOPIFY").id, webhook=False)
    sent = []
    for i in range(30):
        sim.model.entity(conn.id, "ORDER_CREATED")
        sent.append(conn.entity_events)
        if i % 5 == 4:
            await clock.advance(1)
            await sim.step()
    await sim.drain_webhooks()
    received = [int(p["order"]["platform_id"]) - 100_000 for p in receiver.payloads]
    assert sorted(received) == sent
    assert received != sent
    assert sim.webhooks.stats.reordered > 0


async def test_failed_deliveries_are_retried_with_backoff(
    start_sim: StartSim, receiver: Receiver, clock: FakeClock
) -> None:
    """A 500 from the receiver is retried after 15 s, then 30 s, until it is accepted."""
    sim = await start_sim(webhook_url=receiver.url)
    receiver.answers = [500, 503]
    conn = sim.model.create("SHOPIFY")
    sim.model.make_ready(conn.id)
    await sim.step()
    assert len(receiver.bodies) == 1
    await clock.advance(14)
    await sim.step()
    assert len(receiver.bodies) == 1
    await clock.advance(1)
    await sim.step()
    assert len(receiver.bodies) == 2
    await clock.advance(30)
    await sim.step()
    assert len(receiver.bodies) == 3
    assert len(set(receiver.bodies)) == 1
    assert [a.attempt for a in sim.webhooks.history] == [1, 2, 3]
    assert [a.status for a in sim.webhooks.history] == [500, 503, 200]
    assert sim.webhooks.pending == 0


async def test_delivery_gives_up_after_six_retries_in_about_15_minutes(
    start_sim: StartSim, receiver: Receiver, clock: FakeClock
) -> None:
    """A receiver that always fails gets 1 + 6 attempts over 945 s, then Rutter gives up."""
    sim = await start_sim(webhook_url=receiver.url)
    receiver.answers = [500] * 10
    sim.model.make_ready(sim.model.create("SHOPIFY").id)
    await sim.step()
    for _ in range(80):
        await clock.advance(15)
        await sim.step()
    attempts = list(sim.webhooks.history)
    assert [(a.at - attempts[0].at).total_seconds() for a in attempts] == [0, 15, 45, 105, 225, 465, 945]
    assert (sim.webhooks.stats.given_up, sim.webhooks.pending) == (1, 0)


async def test_unreachable_receiver_is_retried(start_sim: StartSim, clock: FakeClock) -> None:
    """A connection error counts as a failed attempt and is retried, like a non-2xx answer."""
    sim = await start_sim(webhook_url="http://127.0.0.1:9/unreachable", webhook_timeout=2.0)
    sim.model.make_ready(sim.model.create("SHOPIFY").id)
    await sim.step()
    await clock.advance(15)
    await sim.step()
    assert [(a.attempt, a.status) for a in sim.webhooks.history] == [(1, None), (2, None)]
    assert sim.webhooks.pending == 1


# ------------------------------------------------------------------------------------------ controls and fleet


async def test_http_controls_drive_a_connection_and_deliver_before_answering(
    start_sim: StartSim, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """The `/_sim` controls create and change connections; their webhooks are delivered when they answer."""
    sim = await start_sim(webhook_url=receiver.url)
    async with aiohttp.ClientSession() as control:
        async with control.post(sim.base_url + "/_sim/connections", json={"platform": "XERO", "batches": 1}) as r:
            assert r.status == 201
            created = await r.json()
        cid = created["id"]
        for action, body in (("ready", {}), ("batch", {}), ("disable", {"reason": "CERT_EXPIRED"})):
            async with control.post(f"{sim.base_url}/_sim/connections/{cid}/{action}", json=body) as r:
                assert r.status == 200
        assert receiver.codes == ["INITIAL_UPDATE", "HISTORICAL_UPDATE", "CONNECTION_DISABLED"]
        async with control.post(f"{sim.base_url}/_sim/connections/{cid}/batch") as r:
            assert r.status == 409
        async with control.post(f"{sim.base_url}/_sim/connections/{uuid.uuid4()}/ready") as r:
            assert r.status == 404
        async with control.post(f"{sim.base_url}/_sim/connections/{cid}/unhealthy", json={"webhook": False}) as r:
            assert (await r.json())["is_healthy"] is False
        _, body, _ = await get_json(
            http, sim.url + "/connections/status", params={"access_token": created["access_token"]}
        )
        assert body["status"]["disabled_status"]["disabled_reason"] == "CERT_EXPIRED"
        async with control.get(sim.base_url + "/_sim/stats") as r:
            stats = await r.json()
    assert stats["requests"]["by_endpoint"] == {"GET /connections/status": 1}
    assert stats["webhooks"]["delivered"] == 3


async def test_initial_fleet_mix(start_sim: StartSim) -> None:
    """A mixed initial fleet spans several list statuses; an `ongoing` one is all active."""
    mixed = await start_sim(connections=200)
    assert {c.list_status for c in mixed.model.all()} == set(ALL_LIST_STATUSES)
    ongoing = await start_sim(connections=50, initial_mix=InitialMix.ONGOING)
    assert {str(c.list_status) for c in ongoing.model.all()} == {"active"}
    assert all(c.historical_sync_completed for c in ongoing.model.all())


async def test_evolution_takes_a_new_connection_through_initial_sync(
    start_sim: StartSim, receiver: Receiver, clock: FakeClock
) -> None:
    """With `evolve`, a new SHOPIFY connection becomes ready within its platform's initial-sync time."""
    sim = await start_sim(webhook_url=receiver.url, evolve=True, arrivals_per_hour=0.0, incident_rate=0.0)
    conn = sim.model.create("SHOPIFY")
    await clock.advance(8 * 20 * 60)  # a stalled SHOPIFY initial sync takes at most 8 x 20 min
    await sim.step()
    assert conn.is_ready
    assert receiver.codes[0] == "INITIAL_UPDATE"
    assert conn.ready_at is not None
    assert conn.ready_at <= clock.now()


async def test_live_simulator_steps_itself(receiver: Receiver) -> None:
    """With a step interval on the system clock, queued webhooks go out without anyone calling step()."""
    sim = await Simulator.start(
        SimulatorConfig(connections=0, evolve=False, webhook_url=receiver.url, step_interval=0.01), SystemClock()
    )
    try:
        sim.model.make_ready(sim.model.create("SHOPIFY").id)
        await asyncio.wait_for(receiver.arrived.wait(), timeout=10)
    finally:
        await sim.stop()
    assert receiver.codes == ["INITIAL_UPDATE"]


def _fingerprint(model: FleetModel) -> list[tuple[str, str, str, bool, str | None]]:
    return [(c.id, c.platform, str(c.list_status), c.historical_sync_completed, c.disabled_reason) for c in model.all()]


async def test_same_seed_same_run_whatever_the_step_size() -> None:
    """Two models with one seed evolve identically, even stepped at different paces; another seed differs."""
    runs = []
    for seed, step_seconds in ((3, 600), (3, 3600), (4, 3600)):
        clock = FakeClock()
        config = SimulatorConfig(connections=40, seed=seed, incident_rate=0.2, arrivals_per_hour=2.0)
        model = FleetModel(config, clock)
        codes = []
        for _ in range(48 * 3600 // step_seconds):
            await clock.advance(step_seconds)
            model.advance()
            codes += [(w.code, w.connection_id, w.at) for w in model.take_webhooks()]
        runs.append((_fingerprint(model), codes))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert {code for code, _, _ in runs[0][1]} >= {"INITIAL_UPDATE", "CONNECTION_DISABLED", "CONNECTION_UPDATED"}


async def test_seed_scenario_sends_rutters_documented_sequence(
    start_sim: StartSim, receiver: Receiver, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    """The seed scenario readies after batch 1, completes history after batch 3, then sends entity webhooks."""
    sim = await start_sim(webhook_url=receiver.url)
    scenario = seed_scenario(sim.model)
    conn = sim.model.get(scenario.connection_id)
    seen: list[tuple[str, bool, int, bool]] = []
    async for step in play(sim, scenario, clock.advance):
        _, body, _ = await get_json(http, sim.url + "/connections/status", params={"access_token": conn.access_token})
        history = body["status"]["historical_sync_status"]
        progress = (history["num_batches_completed"], history["historical_sync_completed"])
        seen.append((step.code, body["status"]["is_ready"], *progress))
    assert receiver.codes == list(SEED_WEBHOOK_CODES)
    assert seen == [
        ("INITIAL_UPDATE", True, 1, False),
        ("HISTORICAL_UPDATE", True, 2, False),
        ("HISTORICAL_UPDATE", True, 3, True),
        ("EXPENSE_CREATED", True, 3, True),
        ("INVOICE_UPDATED", True, 3, True),
    ]
    assert conn.ready_at is not None
    assert (conn.ready_at - conn.created_at).total_seconds() == SEED_TIME_TO_READY_SECONDS
    history_done = receiver.payloads[2]
    assert history_done["entities_included_to_time_range"] == [
        {"platformEntity": "EXPENSES", "xMonthsAgo": 24},
        {"platformEntity": "INVOICES", "xMonthsAgo": 24},
    ]
    assert sum(step.delay_seconds for step in scenario.steps[:3]) == SEED_TIME_TO_HISTORICAL_COMPLETE_SECONDS


async def test_bulk_create_100k_is_fast_and_listable(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    """100,000 connections over 30 platforms are created in under 5 s and listed in one unpaginated body."""
    sim = await start_sim()
    began = time.perf_counter()
    ids = sim.model.bulk_create(100_000, ALL_PLATFORMS[:30])
    assert time.perf_counter() - began < 5.0
    assert len(set(ids)) == 100_000
    status, body, _ = await get_json(http, sim.url + "/connections", params={"status": "any"})
    assert status == 200
    assert len(body["connections"]) == 100_000
    assert len({item["platform"] for item in body["connections"]}) == 30


def test_cli_flags_and_environment_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `simulate` flags map onto SimulatorConfig; credentials fall back to the RUTTER_* environment."""
    monkeypatch.setenv("RUTTER_CLIENT_ID", "env-id")
    monkeypatch.setenv("RUTTER_CLIENT_SECRET", "env-secret")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        ["--port", "0", "--platforms", "shopify,XERO", "--no-evolve", "--drop-rate", "0.1", "--retry-after", "3"]
    )
    config = config_from_args(args)
    assert (config.client_id, config.client_secret) == ("env-id", "env-secret")
    assert (config.port, config.platforms, config.evolve) == (0, ("SHOPIFY", "XERO"), False)
    assert (config.drop_rate, config.retry_after, config.step_interval) == (0.1, 3.0, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--drop-rate", "2"])

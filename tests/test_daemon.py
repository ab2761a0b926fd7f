"""The daemon driven as a user drives it: the simulator as Rutter, webhooks over HTTP, answers read from /metrics
and the JSON API. Time is a FakeClock shared by both; poll jobs are called by hand."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import aiohttp

from monitor.rutter.signature import sign
from monitor.simulator.scenario import play, seed_scenario
from tests.harness import Rig, rig

SECRET = "sim-client-secret"


async def post_webhook(r: Rig, body: bytes, signature: str | None = None) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Rutter-Signature"] = signature
    async with r.http.post(f"{r.running.url}/webhooks/rutter", data=body, headers=headers) as resp:
        await resp.read()
        return resp


async def stage_of(r: Rig, connection_id: str) -> tuple[str, str]:
    c = await r.connection(connection_id)
    return c["lifecycle_stage"], c["health"]


async def test_seed_scenario_moves_through_every_stage_and_observes_both_histograms(tmp_path: Path) -> None:
    """Rutter's three-batch example yields initial_sync -> historical_sync -> ongoing, one time-to-ready
    observation in the 30 min bucket and one time-to-historical-complete in the 12 h bucket."""
    async with rig(tmp_path) as r:
        scenario = seed_scenario(r.sim.model)
        await r.inventory()
        cid = scenario.connection_id
        assert await stage_of(r, cid) == ("initial_sync", "healthy")
        expected = ["historical_sync", "historical_sync", "ongoing", "ongoing", "ongoing"]
        async for step, want in zip_async(play(r.sim, scenario, r.clock.advance), expected):
            await r.daemon.processor.drain()
            assert (await stage_of(r, cid))[0] == want, step.name
        m = await r.metrics()
        ready = {k[1]: v for k, v in m.items() if k[0] == "rutter_connection_time_to_ready_seconds_bucket"}
        assert ready[(("le", "600.0"), ("platform", "QUICKBOOKS"))] == 0
        assert ready[(("le", "1800.0"), ("platform", "QUICKBOOKS"))] == 1
        assert m[("rutter_connection_time_to_ready_seconds_count", (("platform", "QUICKBOOKS"),))] == 1
        hist = {k[1]: v for k, v in m.items() if k[0] == "rutter_connection_time_to_historical_complete_seconds_bucket"}
        assert hist[(("le", "28800.0"), ("platform", "QUICKBOOKS"))] == 0
        assert hist[(("le", "43200.0"), ("platform", "QUICKBOOKS"))] == 1
        stage = "rutter_connection_stage_transitions_total"
        assert await r.sample(stage, platform="QUICKBOOKS", from_stage="initial_sync", to_stage="historical_sync") == 1
        assert await r.sample(stage, platform="QUICKBOOKS", from_stage="historical_sync", to_stage="ongoing") == 1
        assert await r.sample(stage, platform="QUICKBOOKS", from_stage="initial_sync", to_stage="ongoing") == 0
        cells = "rutter_connections"
        assert await r.sample(cells, lifecycle_stage="ongoing", health="healthy", platform="QUICKBOOKS") == 1
        detail = await r.connection(cid)
        assert detail["last_data_at"] is not None
        assert [(t["dimension"], t["from"], t["to"], t["source"]) for t in detail["transitions"]] == [
            ("lifecycle_stage", "initial_sync", "historical_sync", "webhook"),
            ("lifecycle_stage", "historical_sync", "ongoing", "webhook"),
        ]


async def zip_async(gen, items):  # type: ignore[no-untyped-def]
    it = iter(items)
    async for value in gen:
        yield value, next(it)


async def test_bad_and_repeated_webhooks_get_clear_answers_and_change_nothing(tmp_path: Path) -> None:
    """A forged signature gets 401, malformed JSON 400, an oversized body 413, and a duplicate is counted only."""
    async with rig(tmp_path, settings={"monitor_webhook_max_bytes": 4096}) as r:
        conn = r.sim.model.create("SHOPIFY")
        await r.inventory()
        body = json.dumps(
            {
                "type": "CONNECTION",
                "code": "CONNECTION_DISABLED",
                "connection_id": conn.id,
                "access_token": conn.access_token,
            }
        ).encode()
        assert (await post_webhook(r, body, sign(body, "not-the-secret"))).status == 401
        assert (await post_webhook(r, body)).status == 401
        await r.daemon.processor.drain()
        assert (await stage_of(r, conn.id))[1] == "healthy"
        assert (await post_webhook(r, b"{not json", sign(b"{not json", SECRET))).status == 400
        nocode = b'{"type":"CONNECTION"}'
        assert (await post_webhook(r, nocode, sign(nocode, SECRET))).status == 400
        big = b'{"code":"ORDER_CREATED","pad":"' + b"x" * 5000 + b'"}'
        assert (await post_webhook(r, big, sign(big, SECRET))).status == 413
        r.sim.model.disable(conn.id, "SHOP_NOT_FOUND", webhook=False)
        ok = await post_webhook(r, body, sign(body, SECRET))
        assert ok.status == 200
        assert (await post_webhook(r, body, sign(body, SECRET))).status == 200
        await r.daemon.processor.drain()
        assert (await stage_of(r, conn.id))[1] == "disabled"
        received = "rutter_webhooks_received_total"
        assert await r.sample(received, code="UNPARSED", outcome="invalid_signature") == 2
        assert await r.sample(received, code="UNPARSED", outcome="malformed") == 2
        assert await r.sample(received, code="UNPARSED", outcome="too_large") == 1
        assert await r.sample(received, code="CONNECTION_DISABLED", outcome="accepted") == 1
        assert await r.sample(received, code="CONNECTION_DISABLED", outcome="duplicate") == 1
        health = "rutter_connection_health_transitions_total"
        labels = {"platform": "SHOPIFY", "from_health": "healthy", "to_health": "disabled"}
        assert await r.sample(health, **labels, reason="SHOP_NOT_FOUND") == 1


async def test_bodies_without_a_length_or_shorter_than_it_are_answered_and_the_daemon_goes_on(tmp_path: Path) -> None:
    """A chunked body (no Content-Length) is stored or refused with 413 by its streamed size; an empty body is
    malformed; a client that closes before sending the length it declared costs nothing."""

    async def chunked(body: bytes) -> aiohttp.ClientResponse:
        async def parts():  # type: ignore[no-untyped-def]
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        headers = {"X-Rutter-Signature": sign(body, SECRET)}
        async with r.http.post(f"{r.running.url}/webhooks/rutter", data=parts(), headers=headers) as resp:
            await resp.read()
            return resp

    async with rig(tmp_path, settings={"monitor_webhook_max_bytes": 4096}) as r:
        small = b'{"code":"ORDER_CREATED","pad":"' + b"x" * 3000 + b'"}'
        big = b'{"code":"ORDER_CREATED","pad":"' + b"x" * 5000 + b'"}'
        assert (await chunked(small)).status == 200
        assert (await chunked(big)).status == 413
        assert (await post_webhook(r, b"", sign(b"", SECRET))).status == 400
        host, port = r.running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /webhooks/rutter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"code":')
        await writer.drain()
        writer.write_eof()
        await reader.read()  # the connection is gone, so is the answer; the daemon counts it and goes on
        writer.close()
        assert (await post_webhook(r, small, sign(small, SECRET))).status == 200  # duplicate of the first: still 200
        received = "rutter_webhooks_received_total"
        assert await r.sample(received, code="ENTITY", outcome="accepted") == 1
        assert await r.sample(received, code="ENTITY", outcome="duplicate") == 1
        assert await r.sample(received, code="UNPARSED", outcome="too_large") == 1
        assert await r.sample(received, code="UNPARSED", outcome="malformed") == 2  # the empty and the cut-off one


async def test_unknown_codes_are_accepted_stored_and_counted(tmp_path: Path) -> None:
    """A code the daemon does not know is acknowledged, kept in the inbox and counted under OTHER."""
    async with rig(tmp_path) as r:
        body = b'{"type":"NEW_THING","code":"SOMETHING_NEW","connection_id":null}'
        assert (await post_webhook(r, body, sign(body, SECRET))).status == 200
        assert await r.sample("rutter_webhooks_received_total", code="OTHER", outcome="accepted") == 1
        stored = await r.daemon.store.dedupe_rows(r.clock.now() - timedelta(minutes=1))
        assert [row.is_lifecycle for row in stored] == [False]
        await r.daemon.processor.drain()
        assert (await r.daemon.store.inbox_backlog())[0] == 0


async def test_disable_then_reconnect_records_the_reason_from_the_status_endpoint(tmp_path: Path) -> None:
    """CONNECTION_DISABLED then CONNECTION_UPDATED gives disabled -> healthy; the reason is read from the status."""
    async with rig(tmp_path) as r:
        conn = r.sim.model.create("XERO")
        r.sim.model.make_ready(conn.id, webhook=False)
        await r.inventory()
        await r.refresh()
        r.sim.model.disable(conn.id, "SHOP_PAYMENT_REQUIRED")
        await r.deliver()
        detail = await r.connection(conn.id)
        assert detail["health"] == "disabled"
        assert detail["disabled_reason"] == "SHOP_PAYMENT_REQUIRED"
        r.sim.model.reconnect(conn.id)
        await r.deliver()
        detail = await r.connection(conn.id)
        assert detail["health"] == "healthy"
        health = [(t["from"], t["to"], t["reason"]) for t in detail["transitions"] if t["dimension"] == "health"]
        assert health == [("healthy", "disabled", "SHOP_PAYMENT_REQUIRED"), ("disabled", "healthy", "")]
        name = "rutter_connection_health_transitions_total"
        base = {"platform": "XERO"}
        assert (
            await r.sample(name, **base, from_health="healthy", to_health="disabled", reason="SHOP_PAYMENT_REQUIRED")
            == 1
        )
        assert await r.sample(name, **base, from_health="disabled", to_health="healthy", reason="") == 1


async def test_a_disable_whose_fetch_the_budget_defers_gets_reason_and_store_name_from_the_status_poll(
    tmp_path: Path,
) -> None:
    """With the rate budget spent, a CONNECTION_DISABLED is recorded at once without its status (counted as a
    deferred fetch); the next status refresh takes that connection first and brings the reason and the store name."""
    async with rig(tmp_path, settings={"monitor_rate_limit": 1}) as r:
        conn = r.sim.model.create("WOO_COMMERCE", store_name="Corner Shop")
        r.sim.model.make_ready(conn.id, webhook=False)
        await r.drive(r.daemon.poller.inventory())  # its list request fills the window of 1 per 10 s
        await r.clock.advance(1.0)  # healthy when first seen, disabled a second later
        r.sim.model.disable(conn.id, "SHOP_IS_LOCKED")
        await r.deliver()
        detail = await r.connection(conn.id)
        assert detail["health"] == "disabled"
        assert detail["disabled_reason"] is None
        assert detail["store_name"] is None
        assert await r.sample("rutter_monitor_status_fetches_deferred_total") == 1
        assert await r.refresh() >= 1
        detail = await r.connection(conn.id)
        assert detail["disabled_reason"] == "SHOP_IS_LOCKED"
        assert detail["store_name"] == "Corner Shop"
        health = [(t["from"], t["to"]) for t in detail["transitions"] if t["dimension"] == "health"]
        assert health == [("healthy", "disabled")]


async def test_reconnect_then_identical_disable_counts_as_a_second_disable(tmp_path: Path) -> None:
    """Byte-identical disable bodies separated by a reconnect are two disables, not a duplicate."""
    async with rig(tmp_path) as r:
        conn = r.sim.model.create("SHOPIFY")
        r.sim.model.make_ready(conn.id, webhook=False)
        await r.inventory()
        for _ in range(2):
            r.sim.model.disable(conn.id, "SHOP_IS_LOCKED")
            await r.deliver()
            r.sim.model.reconnect(conn.id)
            await r.deliver()
        name = "rutter_connection_health_transitions_total"
        labels = {"platform": "SHOPIFY", "from_health": "healthy", "to_health": "disabled", "reason": "SHOP_IS_LOCKED"}
        assert await r.sample(name, **labels) == 2
        assert await r.sample("rutter_webhooks_received_total", code="CONNECTION_DISABLED", outcome="duplicate") == 0


async def test_unhealthy_is_seen_by_the_next_inventory(tmp_path: Path) -> None:
    """Rutter sends no webhook for unhealthy; the next inventory shows it."""
    async with rig(tmp_path) as r:
        conn = r.sim.model.create("AMAZON")
        r.sim.model.make_ready(conn.id, webhook=False)
        await r.inventory()
        r.sim.model.set_unhealthy(conn.id, True)
        await r.inventory()
        assert (await stage_of(r, conn.id))[1] == "unhealthy"
        cells = "rutter_connections"
        assert await r.sample(cells, lifecycle_stage="ongoing", health="unhealthy", platform="AMAZON") == 1


async def test_dropped_disable_is_healed_by_polling_and_counted_missed_after_the_grace(tmp_path: Path) -> None:
    """A disable whose webhook never came is seen by the inventory; after the grace it counts as missed."""
    async with rig(tmp_path, settings={"monitor_missed_webhook_grace": "15m"}) as r:
        conn = r.sim.model.create("NETSUITE")
        r.sim.model.make_ready(conn.id, webhook=False)
        await r.inventory()
        await r.refresh()
        r.sim.model.disable(conn.id, "CERT_EXPIRED", webhook=False)
        await r.inventory()
        await r.refresh()
        detail = await r.connection(conn.id)
        assert (detail["health"], detail["disabled_reason"]) == ("disabled", "CERT_EXPIRED")
        missed = "rutter_missed_webhooks_total"
        await r.clock.advance(14 * 60 + 59)
        await r.refresh()
        assert await r.sample(missed, platform="NETSUITE", code="CONNECTION_DISABLED") == 0
        await r.clock.advance(1)
        await r.refresh()
        assert await r.sample(missed, platform="NETSUITE", code="CONNECTION_DISABLED") == 1


async def test_late_webhook_within_the_grace_is_not_a_missed_webhook(tmp_path: Path) -> None:
    """Polling saw the disable first, but the webhook arrived within the grace: nothing is missed."""
    async with rig(tmp_path) as r:
        conn = r.sim.model.create("NETSUITE")
        r.sim.model.make_ready(conn.id, webhook=False)
        await r.inventory()
        r.sim.model.disable(conn.id, "CERT_EXPIRED", webhook=False)
        await r.inventory()
        await r.clock.advance(600)
        r.sim.model.emit(conn.id, "CONNECTION_DISABLED")
        await r.deliver()
        await r.clock.advance(3600)
        await r.refresh()
        assert await r.sample("rutter_missed_webhooks_total", platform="NETSUITE", code="CONNECTION_DISABLED") == 0


async def test_connection_gone_from_two_inventories_is_deleted_and_leaves_the_gauges(tmp_path: Path) -> None:
    """Deletion needs two inventories; the connection leaves rutter_connections and keeps its history."""
    async with rig(tmp_path) as r:
        keep = [r.sim.model.create("SHOPIFY") for _ in range(3)]
        gone = r.sim.model.create("SHOPIFY")
        await r.inventory()
        r.sim.model.delete(gone.id)
        await r.inventory()
        assert (await r.connection(gone.id))["deleted"] is False
        await r.inventory()
        detail = await r.connection(gone.id)
        assert detail["deleted"] is True
        assert detail["transitions"][-1]["to"] == "deleted"
        assert await r.sample("rutter_connections_deleted_total", platform="SHOPIFY") == 1
        total = sum(v for (name, labels), v in (await r.metrics()).items() if name == "rutter_connections")
        assert total == len(keep)
        listed = await r.api("/api/v1/connections?platform=SHOPIFY")
        assert {c["id"] for c in listed["items"]} == {c.id for c in keep}


async def test_unknown_connection_in_a_webhook_is_fetched_not_dropped(tmp_path: Path) -> None:
    """A webhook for a connection the daemon never listed makes it fetch the connection and track it."""
    async with rig(tmp_path) as r:
        conn = r.sim.model.create("WOO_COMMERCE", store_name="Corner Shop")
        r.sim.model.make_ready(conn.id)
        await r.deliver()
        detail = await r.connection(conn.id)
        assert detail["platform"] == "WOO_COMMERCE"
        assert detail["store_name"] == "Corner Shop"
        assert detail["transitions"] == []


async def test_api_filters_and_paginates_and_never_shows_tokens(tmp_path: Path) -> None:
    """The connection list filters by stage/health/platform, pages with a cursor and hides access tokens."""
    async with rig(tmp_path) as r:
        made = [r.sim.model.create("SHOPIFY") for _ in range(5)] + [r.sim.model.create("XERO") for _ in range(2)]
        await r.inventory()
        seen: list[str] = []
        cursor = None
        while True:
            query = "/api/v1/connections?platform=SHOPIFY&limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = await r.api(query)
            seen += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(c.id for c in made[:5])
        page = await r.api("/api/v1/connections?lifecycle_stage=initial_sync&health=healthy&limit=100")
        assert len(page["items"]) == 7
        text = json.dumps(page)
        for c in made:
            assert c.access_token not in text
        async with r.http.get(f"{r.running.admin_url}/api/v1/connections?health=bogus") as resp:
            assert resp.status == 400


async def test_readyz_waits_for_the_first_inventory(tmp_path: Path) -> None:
    """/readyz is 503 until an inventory finished, then 200; /healthz is always 200."""
    async with rig(tmp_path) as r:
        async with r.http.get(f"{r.running.admin_url}/readyz") as resp:
            assert resp.status == 503
        async with r.http.get(f"{r.running.admin_url}/healthz") as resp:
            assert resp.status == 200
        await r.inventory()
        async with r.http.get(f"{r.running.admin_url}/readyz") as resp:
            assert resp.status == 200
        await r.clock.advance(2 * 300 + 1)
        async with r.http.get(f"{r.running.admin_url}/readyz") as resp:
            assert resp.status == 503


async def test_polling_stays_inside_the_rate_budget(tmp_path: Path) -> None:
    """However large the backlog, no sliding 10 s window holds more requests than MONITOR_RATE_LIMIT."""
    async with rig(tmp_path, settings={"monitor_rate_limit": 20}) as r:
        for _ in range(120):
            r.sim.model.create("SHOPIFY")
        await r.inventory()
        for _ in range(12):
            await r.refresh()
            await r.clock.advance(10)
        assert r.sim.stats.max_in_window <= 20
        assert r.sim.stats.rate_limited == 0
        assert r.sim.stats.total > 60


async def test_series_set_depends_on_platforms_not_connections(tmp_path: Path) -> None:
    """The set of series is the same for 10 and 10,000 connections on the same platforms."""
    platforms = ("SHOPIFY", "XERO")
    sets = []
    for count in (10, 10_000):
        folder = tmp_path / str(count)
        folder.mkdir()
        async with rig(folder) as r:
            r.sim.model.bulk_create(count, platforms)
            await r.inventory()
            assert len(r.daemon.fleet) == count
            sets.append({(n, labels) for n, labels in await r.metrics() if n.startswith("rutter_")})
    assert sets[0] == sets[1]

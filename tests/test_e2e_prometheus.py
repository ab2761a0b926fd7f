"""The ops kit end to end, against the real tools: the simulator as Rutter, the daemon, a real Prometheus scraping it
every second with (a `for:`-scaled copy of) alerts/rules.yml, and a real Alertmanager configured from
alerts/alertmanager.yml whose Slack receivers post to a fake Slack. After a scenario that makes every metric move,
every dashboard query, recording rule and alert operand is run through Prometheus's query API and must return data;
then a degraded platform fires RutterPlatformDegraded all the way to Slack, and resolves the same way."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from monitor.app import Daemon, Running, start
from monitor.clock import SystemClock
from monitor.config import Settings
from monitor.domain import LifecycleStage
from monitor.simulator import InitialMix, Simulator, SimulatorConfig
from tests.fakeslack import FakeMessage, FakeSlack
from tests.harness import free_port
from tests.metric_contract import PROMETHEUS_JOB, family_of, pending_families, promql_metric_names
from tests.promstack import (
    RULES,
    PromApi,
    Server,
    absent_argument,
    alertmanager_config,
    comparison_operands,
    eventually,
    prometheus_config,
    scaled_rules,
    start_server,
)
from tests.tools import require_tool

pytestmark = [pytest.mark.prometheus, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PLATFORMS = ("SHOPIFY", "QUICKBOOKS", "XERO", "NETSUITE", "AMAZON")  # 8 connections each
DEGRADED = "SHOPIFY"
BUSY = "QUICKBOOKS"  # where connections become ready and finish their history
# Grafana's built-in variables, as a dashboard over the last 6 hours would fill them.
BUILTINS = {"__rate_interval": "1m", "__range": "6h", "__interval": "15s"}


@dataclass
class Stack:
    sim: Simulator
    daemon: Daemon
    running: Running
    prometheus: PromApi
    alertmanager: Server
    slack: FakeSlack
    instance: str


def _pending_reads(expr: str) -> bool:
    """Whether `expr` reads a family the ops kit declares but the daemon does not export yet."""
    return any(family_of(name) in pending_families() for name in promql_metric_names(expr))


async def _run_scenario(stack: Stack) -> None:
    """Make every family move: stages and both histograms, a disable with its reason, a needs-update, a dropped
    webhook that polling heals (a missed webhook), a deletion."""
    model, daemon = stack.sim.model, stack.daemon
    await eventually(lambda: daemon.poller.inventories >= 1 and len(daemon.fleet) == len(model), 10, "first inventory")
    by_platform = {p: [c for c in model.all() if c.platform == p and c.is_ready] for p in PLATFORMS}
    syncing = [c for c in model.all() if not c.is_ready]
    for conn in syncing[:-1]:  # the last one stays in initial sync
        model.make_ready(conn.id)
    await stack.sim.drain_webhooks()

    def left_initial_sync() -> bool:
        states = [daemon.fleet.get(conn.id) for conn in syncing[:-1]]
        return all(s is not None and s.lifecycle_stage is not LifecycleStage.INITIAL_SYNC for s in states)

    # Processed before any history completes: a connection first seen ready with its history already complete
    # goes from initial sync straight to ongoing, and has no time to historical completion to observe.
    await eventually(left_initial_sync, 10, "the ready webhooks processed")
    for conn in syncing[:2]:
        model.complete_batch(conn.id)
    model.disable(by_platform["NETSUITE"][0].id, "SHOP_PAYMENT_REQUIRED")
    model.needs_update(by_platform[BUSY][0].id)
    model.disable(by_platform["XERO"][0].id, "CERT_EXPIRED", webhook=False)  # Rutter's webhook is lost
    model.delete(by_platform["AMAZON"][0].id)
    await stack.sim.drain_webhooks()
    async with stack.prometheus.http.post(f"{stack.running.url}/webhooks/rutter", data=b"{}") as resp:
        assert resp.status == 401  # a forged webhook

    disabled = {"from_health": "healthy", "to_health": "disabled", "reason": "SHOP_PAYMENT_REQUIRED"}
    expected = [
        ("rutter_connection_time_to_ready_seconds_count", {"platform": BUSY}, len(syncing) - 1),
        ("rutter_connection_time_to_historical_complete_seconds_count", {"platform": BUSY}, 2),
        ("rutter_connection_health_transitions_total", {"platform": "NETSUITE", **disabled}, 1),
        ("rutter_missed_webhooks_total", {"platform": "XERO", "code": "CONNECTION_DISABLED"}, 1),
        ("rutter_connections_deleted_total", {"platform": "AMAZON"}, 1),
    ]

    async def moved() -> bool:
        await daemon.poller.inventory()  # sees the unannounced disable, then the deletion
        await daemon.poller.refresh_statuses()  # counts the missed webhook once the grace is over
        return all(daemon.registry.get_sample_value(name, labels) == value for name, labels, value in expected)

    try:
        await eventually(moved, 15, "the daemon saw the whole scenario", poll=0.5)
    except AssertionError:
        actual = [(name, labels, daemon.registry.get_sample_value(name, labels)) for name, labels, _ in expected]
        raise AssertionError(f"expected {expected}, got {actual}") from None
    prom = stack.prometheus
    await eventually(
        lambda: prom.has_data(f'count_over_time(up{{job="{PROMETHEUS_JOB}"}}[1m]) >= 5'), 15, "five scrapes"
    )
    await eventually(
        lambda: prom.has_data("sum(rutter_missed_webhooks_total) == 1 and sum(rutter_connections_deleted_total) == 1"),
        10,
        "Prometheus scraped the scenario",
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Fake Slack, simulator, daemon, Alertmanager and Prometheus on loopback, after the scenario ran."""
    prometheus_bin = require_tool("prometheus")
    alertmanager_bin = require_tool("prometheus-alertmanager", "alertmanager")
    folder = tmp_path_factory.mktemp("e2e")
    servers: list[Server] = []
    sim_config = SimulatorConfig(
        connections=8 * len(PLATFORMS),
        platforms=PLATFORMS,
        seed=4,
        evolve=False,  # only the scenario moves the fleet
        step_interval=None,
        initial_mix=InitialMix.ONGOING,
    )
    async with (
        FakeSlack() as slack,
        aiohttp.ClientSession() as http,
        await Simulator.start(sim_config, SystemClock()) as sim,
    ):
        for batches in (1, 1, 1, 0):  # new connections the daemon will see become ready
            sim.model.create(BUSY, batches=batches, created_at=sim.clock.now() - timedelta(minutes=25))
        sim.model.create("XERO", created_at=sim.clock.now() - timedelta(minutes=10))
        am_port, prom_port = free_port(), free_port()
        settings = Settings.model_validate(
            {
                "rutter_client_id": sim_config.client_id,
                "rutter_client_secret": sim_config.client_secret,
                "rutter_api_url": sim.url,
                "monitor_database_url": f"sqlite+aiosqlite:///{folder}/monitor.db",
                "monitor_host": "127.0.0.1",
                "monitor_inventory_interval": "2s",
                "monitor_status_interval": "10s",
                "monitor_missed_webhook_grace": "1s",
                "monitor_rate_limit": 500,
                # The daemon's own alerting: messages to the fake Slack, alerts pushed to the real Alertmanager.
                "slack_webhook_url": slack.webhook_url_for("daemon"),
                "alertmanager_url": f"http://127.0.0.1:{am_port}",
                "monitor_group_wait": "1s",
                "monitor_alert_eval_interval": "1s",
            }
        )
        daemon = Daemon(settings, clock=SystemClock())
        running = await start(daemon, port=0)
        sim.set_webhook_url(f"{running.url}/webhooks/rutter")
        try:
            (folder / "am.yml").write_text(yaml.safe_dump(alertmanager_config(slack.webhook_url_for)))
            servers.append(
                await start_server(
                    "alertmanager",
                    [
                        alertmanager_bin,
                        f"--config.file={folder / 'am.yml'}",
                        f"--storage.path={folder / 'am'}",
                        f"--web.listen-address=127.0.0.1:{am_port}",
                        "--cluster.listen-address=",
                    ],
                    am_port,
                    folder,
                    http,
                )
            )
            instance = running.admin_url.removeprefix("http://")
            (folder / "rules.yml").write_text(yaml.safe_dump(scaled_rules(), sort_keys=False))
            config = prometheus_config(folder / "rules.yml", instance, f"127.0.0.1:{am_port}", f"127.0.0.1:{prom_port}")
            (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
            servers.append(
                await start_server(
                    "prometheus",
                    [
                        prometheus_bin,
                        f"--config.file={folder / 'prometheus.yml'}",
                        f"--storage.tsdb.path={folder / 'prom'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    prom_port,
                    folder,
                    http,
                )
            )
            result = Stack(sim, daemon, running, PromApi(servers[-1].url, http), servers[0], slack, instance)
            # Counters moved before Prometheus's first scrape would show no increase: let it take a baseline first.
            up = f'count_over_time(up{{job="{PROMETHEUS_JOB}"}}[1m]) >= 2'
            await eventually(lambda: result.prometheus.has_data(up), 10, "two scrapes before the scenario")
            await _run_scenario(result)
            yield result
        finally:
            for server in reversed(servers):
                server.stop()
            await running.stop()


# --- queries -------------------------------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for panel in panels for p in (panel, *_panels(panel.get("panels", [])))]


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS]


def _substitute(expr: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


async def _empty(prom: PromApi, queries: dict[str, str], within: float = 10.0) -> set[str]:
    """The queries (by name) still returning no data once those expected to have data had `within` s to get it."""
    empty: set[str] = set()

    async def settled() -> bool:
        empty.clear()
        for where, expr in queries.items():
            if not await prom.has_data(expr):
                empty.add(where)
        return all(_pending_reads(queries[where]) for where in empty)

    with contextlib.suppress(AssertionError):  # what stays empty is asserted by the caller
        await eventually(settled, within, "queries returning data")
    return empty


async def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Every panel query of every dashboard, with its variables set to All and to a real value taken from Prometheus
    the way Grafana takes it, parses and returns data; only queries of families not exported yet may be empty."""
    prom = stack.prometheus
    queries: dict[str, str] = {}
    for dashboard in _dashboards():
        real: dict[str, str] = {}
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
            found = await prom.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert found["status"] == "success"
            want = {"platform": BUSY, "instance": stack.instance}[variable["name"]]
            assert want in found["data"], (variable["name"], found["data"])
            real[variable["name"]] = want
        for choice, values in (("All", dict.fromkeys(real, ".*")), ("real", real)):
            for panel in _panels(dashboard["panels"]):
                for target in panel.get("targets", []):
                    where = f"{dashboard['uid']} / {panel['title']} / {target['refId']} ({choice})"
                    queries[where] = _substitute(target["expr"], {**BUILTINS, **values})
    assert len(queries) > 60
    empty = await _empty(prom, queries)
    assert empty == {where for where, expr in queries.items() if _pending_reads(expr)}


async def test_every_recording_rule_loads_and_returns_data(stack: Stack) -> None:
    """Prometheus loaded every rule of alerts/rules.yml and evaluates it without error, and every recording rule's
    expression and recorded series return data."""
    prom = stack.prometheus
    loaded = await prom.get("/api/v1/rules")
    rules = [rule for group in loaded["data"]["groups"] for rule in group["rules"]]
    mine = [rule for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]
    assert len(rules) == len(mine)
    assert [(r["health"], r.get("lastError", "")) for r in rules] == [("ok", "")] * len(rules)
    queries = {}
    for rule in mine:
        if "record" in rule:
            queries[f"{rule['record']} (expr)"] = rule["expr"]
            queries[f"{rule['record']} (series)"] = rule["record"]
    assert not await _empty(prom, queries)


async def test_every_alert_expression_parses_and_its_operands_return_data(stack: Stack) -> None:
    """Each alert expression is valid PromQL for Prometheus, and each side of each comparison returns data (for an
    absent() alert: its argument does, so absent() is empty); only operands of families not exported yet may not."""
    prom = stack.prometheus
    queries = {}
    for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            await prom.query(rule["expr"])  # parses and evaluates
            inner = absent_argument(rule["expr"])
            if inner is not None:
                assert not await prom.has_data(rule["expr"]), rule["alert"]
                queries[f"{rule['alert']}: {inner}"] = inner
                continue
            operands = comparison_operands(rule["expr"])
            assert len(operands) >= 1, rule["alert"]
            for operand in operands:
                queries[f"{rule['alert']}: {operand}"] = operand
    empty = await _empty(prom, queries)
    assert empty == {where for where, expr in queries.items() if _pending_reads(expr)}


# --- a fleet alert through Alertmanager to Slack -------------------------------------------------------------------


def _degraded(slack: FakeSlack, status: str) -> list[FakeMessage]:
    title = f"[{status}{':1' if status == 'FIRING' else ''}] RutterPlatformDegraded ({DEGRADED})"
    return [m for m in slack.messages for a in m.attachments if a.get("title", "").strip() == title]


async def test_platform_degraded_fires_to_slack_and_resolves(stack: Stack) -> None:
    """A third of one platform's connections turning unhealthy or disabled fires RutterPlatformDegraded in
    Prometheus, reaches Alertmanager, which mutes the daemon's per-connection alerts of that platform, and the
    critical Slack receiver with its summary, description and runbook; healing the platform sends the resolution
    the same way."""
    model, prom, slack = stack.sim.model, stack.prometheus, stack.slack
    victims = [c for c in model.all() if c.platform == DEGRADED][:3]
    model.set_unhealthy(victims[0].id)
    model.set_unhealthy(victims[1].id)  # Rutter sends no webhook for unhealthy: the inventory sees them
    model.disable(victims[2].id, "SHOP_IS_LOCKED")
    await stack.sim.drain_webhooks()
    assert not _degraded(slack, "FIRING")
    await stack.daemon.poller.inventory()

    firing = f'ALERTS{{alertname="RutterPlatformDegraded", alertstate="firing", platform="{DEGRADED}"}}'
    await eventually(lambda: prom.has_data(firing), 15, "RutterPlatformDegraded firing in Prometheus")
    assert await prom.values(f'platform:rutter_connections_unhealthy_or_disabled:ratio{{platform="{DEGRADED}"}}') == {
        (("platform", DEGRADED),): 3 / 8
    }

    async def alertmanager(alertname: str) -> list[dict[str, Any]]:
        async with prom.http.get(f"{stack.alertmanager.url}/api/v2/alerts") as resp:
            alerts: list[dict[str, Any]] = await resp.json()
        return [a for a in alerts if a["labels"]["alertname"] == alertname]

    [degraded] = await eventually(
        lambda: alertmanager("RutterPlatformDegraded"), 10, "RutterPlatformDegraded in Alertmanager"
    )
    assert degraded["labels"] == {"alertname": "RutterPlatformDegraded", "platform": DEGRADED, "severity": "critical"}

    async def muted() -> bool:
        """The daemon's own alert for the disabled connection is inhibited; other platforms' alerts are not."""
        pushed = await alertmanager("RutterConnectionDisabled")
        mine = [a for a in pushed if a["labels"]["platform"] == DEGRADED]
        others = [a for a in pushed if a["labels"]["platform"] != DEGRADED]
        return (
            [(a["labels"]["connection_id"], a["status"]["inhibitedBy"]) for a in mine]
            == [(victims[2].id, [degraded["fingerprint"]])]
            and bool(others)
            and all(a["status"]["state"] == "active" for a in others)
        )

    await eventually(muted, 10, "the platform's per-connection alerts muted by the inhibition rule")
    [message] = await eventually(lambda: _degraded(slack, "FIRING"), 10, "the firing message in Slack")
    assert message.channel == "webhook:slack-critical"
    [attachment] = message.attachments
    assert attachment["text"].splitlines()[:3] == [
        "*Many connections of one platform are unhealthy or disabled.*",
        f"37.5% of {DEGRADED} connections are unhealthy or disabled. Alertmanager mutes the per-connection alerts "
        f"of {DEGRADED} while this fires.",
        "Runbook: https://github.com/rutter-monitor/rutter-monitor/blob/main/alerts/runbook.md#rutterplatformdegraded",
    ]

    for conn in victims:
        model.reconnect(conn.id)
    await stack.sim.drain_webhooks()
    await stack.daemon.poller.inventory()
    [resolved] = await eventually(lambda: _degraded(slack, "RESOLVED"), 20, "the resolution in Slack")
    assert resolved.channel == "webhook:slack-critical"
    assert len(_degraded(slack, "FIRING")) == 1
    assert not await prom.has_data(firing)

"""Benchmark 5, time to alert: from a CONNECTION_DISABLED webhook to the Slack message arriving at a local fake Slack.

The daemon (`rutter-monitor run`, SQLite, SLACK_WEBHOOK_URL pointed at the fake) gets one signed CONNECTION_DISABLED
at a time for 100 connections on different platforms (so no storm roll-up forms), each sent 1.1 s after the previous
message arrived (so Slack's 1 message per second per channel adds nothing). The simulator already shows each
connection disabled, with its reason, when the webhook is sent: the daemon fetches that status before deciding.

The baseline, in the same run: what a user could build from the daemon's metrics with the real Prometheus and
Alertmanager at common settings: 15 s scrape, 15 s evaluation, an alert on any increase of
rutter_connection_health_transitions_total{to_health="disabled"} by platform, Alertmanager grouping by alertname and
platform with group_wait 30 s, posting to the fake Slack. Its samples (one connection on each of 20 other platforms,
disabled at spread-out moments) run concurrently, since each takes about 45 s.

    .venv/bin/python bench/time_to_alert.py [--samples 100] [--baseline-samples 20]

`--flood RATE` measures the daemon path alone (no baseline) while the open-loop generator sends entity webhooks (no
lifecycle codes, 1-3 KB, signed, for the other connections, each body once) at RATE per second for 60 s; the samples
start 10 s into it, and those sent after it ended measure the inbox catching up:

    .venv/bin/python bench/time_to_alert.py --flood 1500 --samples 8

`--lifecycle-share S` makes that share of the flood lifecycle webhooks that need a status but raise no alert on a
healthy ongoing connection (CONNECTION_UPDATED, HISTORICAL_UPDATE, INITIAL_UPDATE): at 1,500/s and 0.03, 45 status
fetches a second, beyond the daemon's rate budget (100 requests per 10 s by default). The flood carries no disables,
so the samples' Slack messages do not queue behind its own in the channel:

    .venv/bin/python bench/time_to_alert.py --flood 1500 --lifecycle-share 0.03 --samples 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import common
import yaml
from aiohttp import web
from corpus import Mix, api_headers, build, fetch_connections

from monitor.rutter.signature import HEADER, sign
from monitor.simulator.platforms import ALL_PLATFORMS

TARGET_P99_S = 1.0
TARGET_SPEEDUP = 30.0
RULES = """
groups:
  - name: user-built
    interval: 15s
    rules:
      - alert: ConnectionDisabled
        expr: sum by (platform) (increase(rutter_connection_health_transitions_total{to_health="disabled"}[2m])) > 0
        labels:
          severity: critical
"""


@dataclass
class FakeSlack:
    """Incoming-webhook receiver: records when each message arrived, per path."""

    arrivals: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.arrivals[request.match_info["channel"]].append((time.perf_counter(), body))
        self.event.set()
        return web.Response(text="ok")

    async def wait_for(self, channel: str, needle: str, since: int, within: float) -> float:
        """Arrival time of the first message on `channel` (from index `since`) that mentions `needle`."""
        deadline = time.perf_counter() + within
        while True:
            for at, body in self.arrivals[channel][since:]:
                if needle in body:
                    return at
            self.event.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no Slack message about {needle} on {channel}")
            try:
                await asyncio.wait_for(self.event.wait(), remaining)
            except TimeoutError:
                continue


async def start_fake_slack() -> tuple[FakeSlack, web.AppRunner, int]:
    """The fake Slack on a free loopback port: the receiver, its runner (to clean up) and the port."""
    slack = FakeSlack()
    app = web.Application()
    app.router.add_post("/slack/{channel}", slack.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = common.free_port()
    await web.TCPSite(runner, common.HOST, port).start()
    return slack, runner, port


async def disable_in_sim(http: aiohttp.ClientSession, sim_url: str, connection_id: str) -> None:
    """The simulator shows the connection disabled (status endpoint), but sends no webhook: we send it."""
    async with http.post(f"{sim_url}/_sim/connections/{connection_id}/disable",
                         json={"reason": "SHOP_NOT_FOUND", "webhook": False}) as resp:  # fmt: skip
        resp.raise_for_status()


def webhook_body(conn: dict[str, Any]) -> bytes:
    payload = {"type": "CONNECTION", "code": "CONNECTION_DISABLED", "connection_id": conn["id"],
               "access_token": conn["access_token"]}  # fmt: skip
    return json.dumps(payload, separators=(",", ":")).encode()


async def daemon_path(
    http: aiohttp.ClientSession, slack: FakeSlack, sim_url: str, daemon_url: str, conns: list[dict[str, Any]]
) -> list[float]:
    latencies = []
    for n, conn in enumerate(conns, 1):
        await disable_in_sim(http, sim_url, conn["id"])
        body = webhook_body(conn)
        headers = {"Content-Type": "application/json", HEADER: sign(body, common.SECRET)}
        since = len(slack.arrivals["daemon"])
        started = time.perf_counter()
        async with http.post(f"{daemon_url}/webhooks/rutter", data=body, headers=headers) as resp:
            resp.raise_for_status()
        acked = time.perf_counter()
        arrived = await slack.wait_for("daemon", conn["id"], since, within=30)
        latencies.append(arrived - started)
        if arrived - started > 1.0:
            print(f"daemon path: sample {n} took {arrived - started:.2f} s (webhook answered after "
                  f"{acked - started:.2f} s)", flush=True)  # fmt: skip
        if n % 25 == 0:
            print(f"daemon path: {n} messages", flush=True)
        await asyncio.sleep(1.1)
    return latencies


async def baseline_path(
    http: aiohttp.ClientSession, slack: FakeSlack, sim_url: str, daemon_url: str, conns: list[dict[str, Any]]
) -> list[float]:
    """Disable one connection per platform at spread-out moments, all sent as real webhooks to the daemon (which
    counts them in its metrics); each platform's group reaches Slack through Prometheus and Alertmanager."""
    rng = random.Random(7)

    async def one(conn: dict[str, Any], delay: float) -> float:
        await asyncio.sleep(delay)
        await disable_in_sim(http, sim_url, conn["id"])
        body = webhook_body(conn)
        headers = {"Content-Type": "application/json", HEADER: sign(body, common.SECRET)}
        started = time.perf_counter()
        async with http.post(f"{daemon_url}/webhooks/rutter", data=body, headers=headers) as resp:
            resp.raise_for_status()
        arrived = await slack.wait_for("alertmanager", f'platform={conn["platform"]}"', 0, within=180)
        return arrived - started

    return list(await asyncio.gather(*(one(c, rng.uniform(0, 30)) for c in conns)))


def prometheus_files(folder: Path, daemon_target: str, am_port: int, slack_url: str) -> None:
    (folder / "rules.yml").write_text(RULES)
    prometheus = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(folder / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{common.HOST}:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "rutter-monitor", "static_configs": [{"targets": [daemon_target]}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(prometheus))
    alertmanager = {
        "route": {"receiver": "slack", "group_by": ["alertname", "platform"], "group_wait": "30s",
                  "group_interval": "5m", "repeat_interval": "4h"},
        "receivers": [{"name": "slack", "slack_configs": [{
            "api_url": slack_url, "channel": "#rutter", "send_resolved": False,
            "title": "{{ .CommonLabels.alertname }} platform={{ .CommonLabels.platform }}",
        }]}],
    }  # fmt: skip
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--baseline-samples", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--flood", type=float, default=0.0, metavar="RATE",
                        help="entity webhooks per second sent meanwhile (daemon path only)")  # fmt: skip
    parser.add_argument("--lifecycle-share", type=float, default=0.0, metavar="S",
                        help="with --flood: this share of it lifecycle webhooks that need a status")  # fmt: skip
    args = parser.parse_args()
    if args.flood:
        await flooded(args.flood, args.samples, args.keep, args.lifecycle_share)
        return
    prometheus_bin = shutil.which("prometheus")
    alertmanager_bin = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not (prometheus_bin and alertmanager_bin):
        raise SystemExit("needs prometheus and alertmanager: apt-get install -y prometheus prometheus-alertmanager")
    common.banner("Time to alert: CONNECTION_DISABLED webhook to Slack")
    work = common.workdir("alert")
    slack, runner, slack_port = await start_fake_slack()
    slack_url = f"http://{common.HOST}:{slack_port}/slack"
    platforms = ALL_PLATFORMS
    per_platform = 4 + -(-args.samples // (len(platforms) - args.baseline_samples))
    sim, sim_url = common.simulator(
        work, connections=per_platform * len(platforms), platforms=platforms, initial_mix="ongoing"
    )
    daemon_port, am_port, prom_port = common.free_port(), common.free_port(), common.free_port()
    daemon_url = f"http://{common.HOST}:{daemon_port}"
    try:
        with common.running(sim):
            await common.wait_http(f"{sim_url}/_sim/stats", sim)
            env = common.daemon_env(sim_url, work / "monitor.db", daemon_port, slack_webhook_url=f"{slack_url}/daemon")
            daemon = common.daemon(work, env)
            with common.running(daemon):
                await common.wait_http(f"{daemon_url}/readyz", daemon, within=120)
                prometheus_files(work, f"{common.HOST}:{daemon_port}", am_port, f"{slack_url}/alertmanager")
                am = common.spawn("alertmanager", [alertmanager_bin, f"--config.file={work / 'alertmanager.yml'}",
                                  f"--storage.path={work / 'am'}", f"--web.listen-address={common.HOST}:{am_port}",
                                  "--cluster.listen-address="], work)  # fmt: skip
                prom = common.spawn("prometheus", [prometheus_bin, f"--config.file={work / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={work / 'prom'}",
                                    f"--web.listen-address={common.HOST}:{prom_port}"], work)  # fmt: skip
                with common.running(am, prom):
                    await common.wait_http(f"http://{common.HOST}:{am_port}/-/ready", am, within=60)
                    await common.wait_http(f"http://{common.HOST}:{prom_port}/-/ready", prom, within=60)
                    async with aiohttp.ClientSession() as http:
                        conns = await listed_connections(http, sim_url)
                        # separate platforms: the baseline's alert must not have fired already for the daemon path
                        theirs_platforms = platforms[: args.baseline_samples]
                        ours_conns = pick(conns, platforms[args.baseline_samples :], args.samples)
                        ours = await daemon_path(http, slack, sim_url, daemon_url, ours_conns)
                        print("baseline path: waiting for Prometheus and Alertmanager", flush=True)
                        theirs_conns = pick(conns, theirs_platforms, args.baseline_samples)
                        theirs = await baseline_path(http, slack, sim_url, daemon_url, theirs_conns)
        report(ours, theirs)
    finally:
        await runner.cleanup()
        if args.keep:
            print(f"\nscratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# Lifecycle codes that need a status fetch and, on a healthy ongoing connection, change nothing an alert reads.
QUIET_LIFECYCLE = (("CONNECTION_UPDATED", 0.5), ("HISTORICAL_UPDATE", 0.3), ("INITIAL_UPDATE", 0.2))


async def flooded(rate: float, samples: int, keep: bool, lifecycle_share: float = 0.0, seconds: float = 60.0) -> None:
    """The daemon path while webhooks arrive at `rate` per second for `seconds`, `lifecycle_share` of them
    lifecycle webhooks that need a status, the rest entity webhooks."""
    mix = Mix(lifecycle_share=lifecycle_share, duplicate_share=0.0, lifecycle_codes=QUIET_LIFECYCLE)
    what = f"{rate:g} webhooks/s, {lifecycle_share:.0%} lifecycle" if lifecycle_share else f"{rate:g} entity webhooks/s"
    common.banner(f"Time to alert during a flood of {what}")
    work = common.workdir("alert-flood")
    slack, runner, slack_port = await start_fake_slack()
    per_platform = 40 + -(-samples // len(ALL_PLATFORMS))
    sim, sim_url = common.simulator(
        work, connections=per_platform * len(ALL_PLATFORMS), platforms=ALL_PLATFORMS, initial_mix="ongoing"
    )
    port = common.free_port()
    url = f"http://{common.HOST}:{port}"
    gen: asyncio.subprocess.Process | None = None
    try:
        with common.running(sim):
            await common.wait_http(f"{sim_url}/_sim/stats", sim)
            env = common.daemon_env(sim_url, work / "monitor.db", port, slack_webhook_url=f"http://{common.HOST}:"
                                    f"{slack_port}/slack/daemon")  # fmt: skip
            daemon = common.daemon(work, env)
            with common.running(daemon):
                await common.wait_http(f"{url}/readyz", daemon, within=120)
                async with aiohttp.ClientSession() as http:
                    targets = pick(await listed_connections(http, sim_url), ALL_PLATFORMS, samples)
                    chosen = {conn["id"] for conn in targets}
                    others = [c for c in await fetch_connections(sim_url, common.CLIENT_ID, common.SECRET)
                              if c.id not in chosen]  # fmt: skip
                    corpus = build(work / "flood.tsv", others, int(rate * seconds) + 1, seed=5,
                                   secret=common.SECRET, mix=mix)  # fmt: skip
                    gen = await asyncio.create_subprocess_exec(
                        common.PYTHON, str(common.BENCH / "loadgen.py"), "--url", f"{url}/webhooks/rutter",
                        "--corpus", str(corpus.path), "--rate", f"{rate:g}", "--duration", f"{seconds:g}",
                        stdout=subprocess.DEVNULL, cwd=common.BENCH)  # fmt: skip
                    flood_started = time.perf_counter()
                    await asyncio.sleep(10)
                    ours = []
                    for conn in targets:
                        sent = time.perf_counter() - flood_started
                        (latency,) = await daemon_path(http, slack, sim_url, url, [conn])
                        ours.append(latency)
                        print(f"sample sent {sent:.0f} s into the flood: {latency:.3f} s", flush=True)
                    async with http.get(f"{url}/metrics") as resp:
                        text = await resp.text()
        backlog = [line for line in text.splitlines()
                   if line.startswith(("rutter_monitor_inbox_", "rutter_monitor_status_fetches_deferred"))]  # fmt: skip
        a = sorted(ours)
        print()
        print(common.table(["path", "flood webhooks/s", "lifecycle share", "samples", "p50 s", "p99 s", "max s"],
                           [["rutter-monitor -> Slack", f"{rate:g}", f"{lifecycle_share:.0%}", len(a),
                             f"{common.percentile(a, 50):.3f}",
                             f"{common.percentile(a, 99):.3f}", f"{a[-1]:.3f}"]]))  # fmt: skip
        print("\nafter the last sample: " + ", ".join(backlog))
    finally:
        if gen is not None:
            if gen.returncode is None:
                gen.kill()
            await gen.wait()
        await runner.cleanup()
        if keep:
            print(f"\nscratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


async def listed_connections(http: aiohttp.ClientSession, sim_url: str) -> list[dict[str, Any]]:
    headers = api_headers(common.CLIENT_ID, common.SECRET)
    async with http.get(f"{sim_url}/versioned/connections", params={"status": "any"}, headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
    connections: list[dict[str, Any]] = body["connections"]
    return connections


def pick(conns: list[dict[str, Any]], platforms: tuple[str, ...], count: int) -> list[dict[str, Any]]:
    """Round-robin over platforms: consecutive picks are on different platforms, at most a few per platform."""
    by_platform: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for conn in conns:
        by_platform[conn["platform"]].append(conn)
    picked: list[dict[str, Any]] = []
    while len(picked) < count:
        before = len(picked)
        for platform in platforms:
            if by_platform[platform] and len(picked) < count:
                picked.append(by_platform[platform].pop())
        if len(picked) == before:
            raise SystemExit("not enough healthy connections in the simulator")
    return picked


def report(ours: list[float], theirs: list[float]) -> None:
    a, b = sorted(ours), sorted(theirs)
    rows = [
        ["rutter-monitor -> Slack", len(a), f"{common.percentile(a, 50):.3f}", f"{common.percentile(a, 99):.3f}",
         f"{a[-1]:.3f}"],
        ["Prometheus + Alertmanager -> Slack (baseline)", len(b), f"{common.percentile(b, 50):.1f}",
         f"{common.percentile(b, 99):.1f}", f"{b[-1]:.1f}"],
    ]  # fmt: skip
    print()
    print(common.table(["path", "samples", "p50 s", "p99 s", "max s"], rows))
    p99 = common.percentile(a, 99)
    speedup = common.percentile(b, 50) / common.percentile(a, 50)
    fast = speedup >= TARGET_SPEEDUP
    print(f"\ntarget p99 <= {TARGET_P99_S:g} s: {p99:.3f} s ({common.verdict(p99 <= TARGET_P99_S)}); "
          f"target >= {TARGET_SPEEDUP:g}x faster (p50 vs p50): {speedup:.0f}x ({common.verdict(fast)}); "
          f"p99 vs p99: {common.percentile(b, 99) / p99:.0f}x")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())

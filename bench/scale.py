"""Benchmark 3, scale: the real daemon (`rutter-monitor run`, SQLite) against the simulator serving 100,000
connections over 30 platforms, next to the same at 1,000 connections (the baseline) in the same run.

Measured for each fleet size:
- peak RSS of the daemon and its SQLite worker process (each one's VmHWM from /proc/<pid>/status, summed), the
  spike while it reads the unpaginated list (about 35 MB of JSON at 100k) included;
- the time one full inventory pass takes to be processed: the first (every connection new) and the one after a
  restart (every connection known), each from the job's start to its "inventory done" log line;
- the /metrics render time (client-side, median and worst of 20) and its number of series;
- the time from a restart (spawning `rutter-monitor run` on the existing database) to /readyz answering 200.

    .venv/bin/python bench/scale.py [--connections 100000] [--baseline 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import common
from corpus import api_headers

from monitor.simulator.platforms import ALL_PLATFORMS

TARGET_RSS_MB = 300.0
TARGET_PASS_S = 10.0
TARGET_RENDER_MS = 50.0
TARGET_RESTART_S = 10.0
PLATFORMS = ALL_PLATFORMS[:30]


@dataclass
class Figures:
    connections: int
    cold_ready_s: float
    first_pass_s: float
    first_hwm_mb: float
    render_median_ms: float
    render_max_ms: float
    series: int
    metrics_bytes: int
    families: dict[str, int]
    stop_s: float
    restart_ready_s: float
    warm_pass_s: float
    restart_hwm_mb: float
    rss_after_mb: float


def _ts(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


def inventory_pass_seconds(proc: common.Proc) -> float:
    """From "daemon started" (the scheduler runs the first inventory at once) to the first "inventory done"."""
    events = proc.log_events()
    started = next(e for e in events if e.get("event") == "daemon started")
    done = next(e for e in events if e.get("event") == "inventory done")
    return (_ts(done) - _ts(started)).total_seconds()


async def wait_inventory(proc: common.Proc, within: float = 300.0) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if any(e.get("event") == "inventory done" for e in proc.log_events()):
            return
        if not proc.alive():
            raise RuntimeError(f"daemon exited:\n{proc.tail()}")
        await asyncio.sleep(0.2)
    raise TimeoutError("no inventory done")


async def wait_status_tick(url: str, within: float = 60.0) -> None:
    """Until the first status tick is done, so that both fleet sizes have used the same API endpoints (their
    request series are created on first use) when the series are counted."""
    deadline = time.perf_counter() + within
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() < deadline:
            async with http.get(url) as resp:
                samples = common.parse_exposition(await resp.text())
            if common.sample_sum(samples, "rutter_monitor_poll_runs_total", task="status", outcome="success") >= 1:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError("no status tick")


async def scrape_times(url: str, times: int = 20) -> tuple[list[float], str]:
    durations = []
    text = ""
    async with aiohttp.ClientSession() as http:
        for _ in range(times):
            started = time.perf_counter()
            async with http.get(url) as resp:
                text = await resp.text()
            durations.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    return sorted(durations), text


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def family_counts(text: str) -> dict[str, int]:
    """Series per metric name (the part before `{`)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


async def measure(n: int, work: Path) -> Figures:
    folder = work / f"n{n}"
    folder.mkdir()
    sim, api_url = common.simulator(folder, connections=n, platforms=PLATFORMS)
    with common.running(sim):
        await common.wait_http(f"{api_url}/_sim/stats", sim, within=300)
        async with (  # the simulator builds its list body once; not the daemon's cost
            aiohttp.ClientSession() as http,
            http.get(f"{api_url}/versioned/connections", params={"status": "any"},
                     headers=api_headers(common.CLIENT_ID, common.SECRET)) as resp,
        ):  # fmt: skip
            listed = len(await resp.read())
        port = common.free_port()
        base = f"http://{common.HOST}:{port}"
        env = common.daemon_env(api_url, folder / "monitor.db", port, monitor_inventory_interval="1h")
        first = common.daemon(folder, env, name="daemon-first")
        try:
            cold_ready = await common.wait_http(f"{base}/readyz", first, within=600)
            await wait_inventory(first)
            first_pass = inventory_pass_seconds(first)
            await wait_status_tick(f"{base}/metrics")
            durations, text = await scrape_times(f"{base}/metrics")
            first_hwm = first.status_kb("VmHWM") / 1024
        finally:
            started = time.perf_counter()
            first.stop(timeout=120)
            stop_s = time.perf_counter() - started
        second = common.daemon(folder, env, name="daemon-restart")
        try:
            restart_ready = await common.wait_http(f"{base}/readyz", second, within=600)
            await wait_inventory(second)
            warm_pass = inventory_pass_seconds(second)
            await asyncio.sleep(1.0)
            restart_hwm = second.status_kb("VmHWM") / 1024
            rss_after = second.status_kb("VmRSS") / 1024
        finally:
            second.stop(timeout=120)
    print(f"{n}: list body {listed / 1e6:.1f} MB, ready {cold_ready:.1f} s, first pass {first_pass:.1f} s, "
          f"peak RSS {first_hwm:.0f} MB", flush=True)  # fmt: skip
    return Figures(
        connections=n,
        cold_ready_s=cold_ready,
        first_pass_s=first_pass,
        first_hwm_mb=first_hwm,
        render_median_ms=durations[len(durations) // 2] * 1000,
        render_max_ms=durations[-1] * 1000,
        series=series_count(text),
        metrics_bytes=len(text),
        families=family_counts(text),
        stop_s=stop_s,
        restart_ready_s=restart_ready,
        warm_pass_s=warm_pass,
        restart_hwm_mb=restart_hwm,
        rss_after_mb=rss_after,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.banner(f"Scale: {args.connections} connections over {len(PLATFORMS)} platforms")
    work = common.workdir("scale")
    base = await measure(args.baseline, work)
    big = await measure(args.connections, work)
    rows = []
    for label, attr, fmt in (
        ("peak RSS, first start with its inventory (MB)", "first_hwm_mb", "{:.0f}"),
        ("peak RSS, restart with its inventory (MB)", "restart_hwm_mb", "{:.0f}"),
        ("RSS after the restart's inventory (MB)", "rss_after_mb", "{:.0f}"),
        ("first inventory pass, all new (s)", "first_pass_s", "{:.2f}"),
        ("inventory pass after restart, all known (s)", "warm_pass_s", "{:.2f}"),
        ("/metrics render, median of 20 (ms)", "render_median_ms", "{:.1f}"),
        ("/metrics render, worst of 20 (ms)", "render_max_ms", "{:.1f}"),
        ("/metrics series", "series", "{}"),
        ("/metrics bytes", "metrics_bytes", "{}"),
        ("cold start to /readyz 200 (s, first inventory included)", "cold_ready_s", "{:.2f}"),
        ("SIGTERM to exit (s)", "stop_s", "{:.2f}"),
        ("restart to /readyz 200 (s)", "restart_ready_s", "{:.2f}"),
    ):
        a, b = getattr(base, attr), getattr(big, attr)
        rows.append([label, fmt.format(a), fmt.format(b), common.ratio(b, a)])
    print()
    print(common.table(["figure", f"{args.baseline} (baseline)", f"{args.connections}", "ratio"], rows))
    print()
    peak = max(big.first_hwm_mb, big.restart_hwm_mb)
    checks = [
        (f"RSS <= {TARGET_RSS_MB:g} MB", f"{peak:.0f} MB", peak <= TARGET_RSS_MB),
        (f"one inventory pass <= {TARGET_PASS_S:g} s", f"first {big.first_pass_s:.1f} s, warm {big.warm_pass_s:.1f} s",
         max(big.first_pass_s, big.warm_pass_s) <= TARGET_PASS_S),
        (f"/metrics <= {TARGET_RENDER_MS:g} ms", f"worst {big.render_max_ms:.1f} ms",
         big.render_max_ms <= TARGET_RENDER_MS),
        (f"restart to ready <= {TARGET_RESTART_S:g} s", f"{big.restart_ready_s:.1f} s",
         big.restart_ready_s <= TARGET_RESTART_S),
        ("series count independent of connections", f"{base.series} vs {big.series}", base.series == big.series),
    ]  # fmt: skip
    for name, value, ok in checks:
        print(f"target {name}: {value} ({common.verdict(ok)})")
    differ = {n: (base.families.get(n, 0), big.families.get(n, 0)) for n in base.families.keys() | big.families.keys()}
    differ = {n: c for n, c in differ.items() if c[0] != c[1]}
    if differ:
        changes = ", ".join(f"{name} {a}->{b}" for name, (a, b) in sorted(differ.items()))
        print(f"series that differ ({args.baseline} -> {args.connections}): {changes}")
    if args.keep:
        print(f"\nscratch folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

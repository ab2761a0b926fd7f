"""Benchmark 2, ack latency during scrapes: webhooks at a fixed offered rate (open loop, latency from the intended send
time) to the real daemon holding 100,000 connections, with Prometheus-style scrapes of /metrics every second, and
the same without scrapes (the baseline). Runs alternate (without, with, without, with) so that drift in a noisy
machine hits both sides; the p99s of the pooled runs are compared.

The daemon runs with MONITOR_INVENTORY_INTERVAL=1h, so no inventory pass falls inside the measured windows
(bench/scale.py measures those); the status refresh job runs as usual.

    .venv/bin/python bench/scrape.py [--rate 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
from typing import Any

import common
from corpus import build, fetch_connections

from monitor.simulator.platforms import ALL_PLATFORMS

TARGET_RATIO = 1.5


def run_loadgen(url: str, corpus: str, rate: float, seconds: float, scrape_url: str | None) -> dict[str, Any]:
    args = [common.PYTHON, str(common.BENCH / "loadgen.py"), "--url", url, "--corpus", corpus,
            "--rate", f"{rate:g}", "--duration", f"{seconds:g}"]  # fmt: skip
    if scrape_url:
        args += ["--scrape-url", scrape_url, "--scrape-interval", "1"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 300, cwd=common.BENCH)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered webhook rate (req/s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--pairs", type=int, default=2, help="(without, with) pairs of runs")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    common.banner(f"Ack latency during scrapes ({args.connections} connections, {args.rate:g} webhooks/s)")
    work = common.workdir("scrape")
    sim, api_url = common.simulator(work, connections=args.connections, platforms=ALL_PLATFORMS[:30])
    with common.running(sim):
        await common.wait_http(f"{api_url}/_sim/stats", sim, within=300)
        conns = await fetch_connections(api_url, common.CLIENT_ID, common.SECRET)
        port = common.free_port()
        base = f"http://{common.HOST}:{port}"
        env = common.daemon_env(api_url, work / "monitor.db", port, monitor_inventory_interval="1h")
        daemon = common.daemon(work, env)
        with common.running(daemon):
            ready = await common.wait_http(f"{base}/readyz", daemon, within=600)
            print(f"daemon ready after {ready:.1f} s with {len(conns)} connections", flush=True)
            count = int(args.rate * args.seconds)
            warm = build(work / "warm.tsv", conns, int(args.rate * 3), seed=100, secret=common.SECRET)
            run_loadgen(f"{base}/webhooks/rutter", str(warm.path), args.rate, 3, None)
            runs: list[tuple[bool, dict[str, Any]]] = []
            for pair in range(args.pairs):
                for scraping in (False, True):
                    seed = 200 + 2 * pair + scraping
                    corpus = build(work / f"run{seed}.tsv", conns, count, seed=seed, secret=common.SECRET)
                    scrape_url = f"{base}/metrics" if scraping else None
                    result = run_loadgen(f"{base}/webhooks/rutter", str(corpus.path), args.rate, args.seconds,
                                         scrape_url)  # fmt: skip
                    runs.append((scraping, result))
                    print(f"{'with' if scraping else 'without'} scrapes: p99 {result['p99_ms']:.2f} ms"
                          + (f", scrape median {result['scrape_p50_ms']:.0f} ms, worst {result['scrape_max_ms']:.0f} ms"
                             if scraping else ""), flush=True)  # fmt: skip
            hwm = daemon.status_kb("VmHWM") / 1024
    report(runs, args, hwm)
    if args.keep:
        print(f"\nscratch folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def report(runs: list[tuple[bool, dict[str, Any]]], args: argparse.Namespace, hwm: float) -> None:
    rows = []
    for scraping, r in runs:
        rows.append([
            "with scrapes" if scraping else "without", f"{r['achieved_rps']:.0f}", f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}", f"{r['p999_ms']:.2f}", f"{r['max_ms']:.1f}", f"{r['dispatch_lag_p99_ms']:.2f}",
            f"{r['scrapes']}" if scraping else "-",
            f"{r['scrape_p50_ms']:.0f} / {r['scrape_max_ms']:.0f}" if scraping else "-",
            ",".join(f"{k}:{v}" for k, v in r["statuses"].items()),
        ])  # fmt: skip
    print()
    print(common.table(["run", "sent/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "send lag p99 ms", "scrapes",
                        "scrape median / worst ms", "statuses"], rows))  # fmt: skip
    without = [r["p99_ms"] for s, r in runs if not s]
    with_ = [r["p99_ms"] for s, r in runs if s]
    base, scraped = sum(without) / len(without), sum(with_) / len(with_)
    print(f"\nopen loop at {args.rate:g} req/s, {args.seconds:g} s per run, 256 connections; generator and scraper in "
          f"one process sharing the 2 cores (send lag: how late the generator itself sent, which the latencies "
          f"include); "
          f"daemon peak RSS {hwm:.0f} MB")  # fmt: skip
    ok = scraped <= TARGET_RATIO * base
    print(f"target p99 with scrapes <= {TARGET_RATIO}x without: mean p99 {scraped:.2f} ms vs {base:.2f} ms = "
          f"{common.ratio(scraped, base)} ({common.verdict(ok)})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())

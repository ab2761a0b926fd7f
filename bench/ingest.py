"""Benchmark 1, webhook ingest: the daemon's full path (verify, dedupe, durable SQLite inbox, 2xx) next to two
baselines in the same process model (one aiohttp process): a bare handler that answers 200, and one that verifies
the signature and parses the JSON but stores nothing.

(a) closed-loop throughput with wrk (bench/webhooks.lua cycles through pre-signed bodies);
(b) ack latency at a fixed offered rate (default 2,000 req/s) from bench/loadgen.py, an open-loop generator that
    measures from each request's intended send time.

Each phase gets a fresh server (and, for the daemon, a fresh database that already holds an inventory of the
simulator's connections, so entity webhooks need no API call). wrk and the generator run on the same 2 cores as
the server.

    .venv/bin/python bench/ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import common
from corpus import Corpus, build, fetch_connections

TARGET_DURABLE_VS_VERIFY = 0.70
TARGET_P99_MS = 20.0


@dataclass
class Server:
    name: str
    proc: common.Proc
    url: str
    metrics_url: str | None = None


async def start_server(kind: str, work: Path, api_url: str, tag: str) -> Server:
    port = common.free_port()
    url = f"http://{common.HOST}:{port}"
    if kind == "daemon":
        folder = work / f"db-{tag}"
        folder.mkdir()
        env = common.daemon_env(api_url, folder / "monitor.db", port)
        proc = common.daemon(work, env, name=f"daemon-{tag}")
        await common.wait_http(f"{url}/readyz", proc, within=120)
        return Server(kind, proc, url, f"{url}/metrics")
    proc = common.spawn(f"{kind}-{tag}", [common.PYTHON, str(common.BENCH / "servers.py"), kind, "--port", str(port)],
                        work)  # fmt: skip
    await common.wait_http(f"{url}/healthz", proc, within=30)
    return Server(kind, proc, url)


def run_wrk(url: str, corpus: Path, seconds: float, connections: int) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s",
            str(common.BENCH / "webhooks.lua"), url, "--", str(corpus), "1"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    for line in out.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no result:\n{out}")


def run_loadgen(url: str, corpus: Path, rate: float, seconds: float, scrape_url: str | None = None) -> dict[str, Any]:
    args = [common.PYTHON, str(common.BENCH / "loadgen.py"), "--url", url, "--corpus", str(corpus),
            "--rate", f"{rate:g}", "--duration", f"{seconds:g}"]  # fmt: skip
    if scrape_url:
        args += ["--scrape-url", scrape_url]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 300, cwd=common.BENCH)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def daemon_counts(metrics_url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
        samples = common.parse_exposition(await resp.text())
    name = "rutter_webhooks_received_total"
    return {
        "accepted": common.sample_sum(samples, name, outcome="accepted"),
        "duplicate": common.sample_sum(samples, name, outcome="duplicate"),
        "unavailable": common.sample_sum(samples, name, outcome="unavailable"),
        "commits": common.sample_sum(samples, "rutter_monitor_inbox_commits_total"),
        "pending": common.sample_sum(samples, "rutter_monitor_inbox_pending"),
    }


async def drain_rate(metrics_url: str, pending: float, within: float = 60.0) -> tuple[float, float, float]:
    """How fast the processor works off the inbox once the load stops: (rows processed, seconds, rows left)."""
    started = time.perf_counter()
    left = pending
    while left > 0 and time.perf_counter() - started < within:
        await asyncio.sleep(0.5)
        left = (await daemon_counts(metrics_url))["pending"]
    return pending - left, time.perf_counter() - started, left


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="offered rate of the open-loop phase (req/s)")
    parser.add_argument("--wrk-seconds", type=float, default=10.0)
    parser.add_argument("--open-seconds", type=float, default=15.0)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--connections", type=int, default=1000, help="connections in the simulator")
    parser.add_argument("--servers", default="bare,verify,daemon")
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, databases)")
    args = parser.parse_args()
    if args.quick:
        args.wrk_seconds, args.open_seconds = 3.0, 4.0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    common.banner("Webhook ingest")
    work = common.workdir("ingest")
    sim, api_url = common.simulator(work, connections=args.connections)
    with common.running(sim):
        await common.wait_http(f"{api_url}/_sim/stats", sim)
        conns = await fetch_connections(api_url, common.CLIENT_ID, common.SECRET)
        wrk_count = int(max(20_000, 12_000 * args.wrk_seconds))
        corpora: dict[str, Corpus] = {
            "warm": build(work / "warm.tsv", conns, 3000, seed=1, secret=common.SECRET),
            "wrk": build(work / "wrk.tsv", conns, wrk_count, seed=2, secret=common.SECRET),
            "open": build(work / "open.tsv", conns, int(args.rate * args.open_seconds), seed=3, secret=common.SECRET),
            "open-warm": build(work / "open-warm.tsv", conns, 2000, seed=4, secret=common.SECRET),
        }
        print(f"mix: {corpora['wrk'].describe()}", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for kind in args.servers.split(","):
            results[kind] = await bench_server(kind, work, api_url, corpora, args)
    report(results, args, corpora["wrk"])
    if args.keep:
        print(f"\nscratch folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


async def bench_server(
    kind: str, work: Path, api_url: str, corpora: dict[str, Corpus], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = await start_server(kind, work, api_url, "closed")
    try:
        url = f"{server.url}/webhooks/rutter"
        run_wrk(server.url, corpora["warm"].path, 2, args.wrk_connections)
        out["wrk"] = run_wrk(server.url, corpora["wrk"].path, args.wrk_seconds, args.wrk_connections)
        if server.metrics_url:
            out["closed_counts"] = await daemon_counts(server.metrics_url)
            out["drain"] = await drain_rate(server.metrics_url, out["closed_counts"]["pending"])
        print(f"{kind}: closed loop {out['wrk']['rps']:.0f} req/s", flush=True)
    finally:
        server.proc.stop()
    server = await start_server(kind, work, api_url, "open")
    try:
        url = f"{server.url}/webhooks/rutter"
        run_loadgen(url, corpora["open-warm"].path, min(args.rate, 1000.0), 2.0)
        out["open"] = run_loadgen(url, corpora["open"].path, args.rate, args.open_seconds)
        if server.metrics_url:
            out["open_counts"] = await daemon_counts(server.metrics_url)
        o = out["open"]
        print(f"{kind}: open loop p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms", flush=True)
    finally:
        server.proc.stop()
    return out


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, wrk_corpus: Corpus) -> None:
    bare = results.get("bare", {}).get("wrk", {}).get("rps", 0.0)
    verify = results.get("verify", {}).get("wrk", {}).get("rps", 0.0)
    rows = []
    for kind, r in results.items():
        w, o = r["wrk"], r["open"]
        bad = w["errors_status"] + w["errors_connect"] + w["errors_read"] + w["errors_timeout"]
        rows.append([
            kind, f"{w['rps']:.0f}", common.ratio(w["rps"], bare), common.ratio(w["rps"], verify), bad,
            f"{o['achieved_rps']:.0f}", f"{o['p50_ms']:.2f}", f"{o['p99_ms']:.2f}", f"{o['p999_ms']:.2f}",
            f"{o['max_ms']:.1f}", ",".join(f"{k}:{v}" for k, v in o["statuses"].items()),
        ])  # fmt: skip
    print()
    print(common.table(
        ["server", "wrk req/s", "vs bare", "vs verify", "wrk errors", f"offered {args.rate:g}/s: sent/s",
         "p50 ms", "p99 ms", "p99.9 ms", "max ms", "statuses"],
        rows,
    ))  # fmt: skip
    print(f"\nwrk: 1 thread, {args.wrk_connections} connections, {args.wrk_seconds:g} s after a 2 s warm-up; "
          f"open loop: {args.rate:g} req/s for {args.open_seconds:g} s, 256 connections, latency from the intended "
          "send time. Load generators share the 2 cores with the server.")  # fmt: skip
    if "daemon" in results:
        d = results["daemon"]
        c = d.get("closed_counts", {})
        if c:
            issued = d["wrk"]["issued"]
            wrapped = max(0, issued - wrk_corpus.count)
            print(f"daemon closed loop: {c['accepted']:.0f} accepted, {c['duplicate']:.0f} duplicates, "
                  f"{c['unavailable']:.0f} refused, {c['commits']:.0f} inbox commits "
                  f"({c['accepted'] / max(1.0, c['commits']):.1f} webhooks per fsync), "
                  f"{c['pending']:.0f} not yet processed when the load stopped"
                  + (f"; wrk re-sent {wrapped} bodies (duplicates beyond the mix)" if wrapped else ""))  # fmt: skip
        if "drain" in d:
            done, seconds, left = d["drain"]
            print(f"after the load: the processor worked off {done:.0f} inbox rows in {seconds:.1f} s "
                  f"({done / max(seconds, 0.001):.0f} rows/s), {left:.0f} left")  # fmt: skip
        full = d["wrk"]["rps"]
        p99 = d["open"]["p99_ms"]
        if verify and bare:
            print(
                f"\ntarget durable/verify >= {TARGET_DURABLE_VS_VERIFY:.0%}: {full / verify:.0%} "
                f"({common.verdict(full / verify >= TARGET_DURABLE_VS_VERIFY)}); durable/bare {full / bare:.0%}"
            )
        print(f"target p99 <= {TARGET_P99_MS:g} ms at {args.rate:g} req/s: {p99:.2f} ms "
              f"({common.verdict(p99 <= TARGET_P99_MS)})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())

"""Open-loop webhook generator: sends the bodies of a corpus file at a fixed rate, on a schedule fixed in advance,
and measures each request's latency from its *intended* send time. A server that stalls therefore shows the stall
in every request scheduled during it, instead of hiding it by slowing the sender down (coordinated omission).

Optionally scrapes a /metrics URL every `--scrape-interval` seconds meanwhile, as Prometheus would.
Prints one JSON object. It runs in its own process and shares the machine's cores with the server it measures.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8080/webhooks/rutter --corpus c.tsv --rate 2000 \
        --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from corpus import load

DEFAULT_CONNECTIONS = 256


@dataclass
class Result:
    latencies: list[float]
    statuses: Counter[int]
    dispatch_lag: list[float]
    scrapes: list[tuple[float, int]]
    wall: float

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        lag = sorted(self.dispatch_lag)

        def pct(values: Sequence[float], q: float) -> float:
            if not values:
                return float("nan")
            rank = max(1, min(len(values), int(-(-q * len(values) // 100))))
            return values[rank - 1] * 1000

        scrape_times = sorted(s for s, _ in self.scrapes)
        return {
            "requests": len(ordered),
            "achieved_rps": len(ordered) / self.wall if self.wall else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": pct(ordered, 50),
            "p90_ms": pct(ordered, 90),
            "p99_ms": pct(ordered, 99),
            "p999_ms": pct(ordered, 99.9),
            "max_ms": ordered[-1] * 1000 if ordered else float("nan"),
            "dispatch_lag_p99_ms": pct(lag, 99),
            "scrapes": len(self.scrapes),
            "scrape_p50_ms": pct(scrape_times, 50),
            "scrape_max_ms": scrape_times[-1] * 1000 if scrape_times else float("nan"),
            "scrape_bytes": self.scrapes[-1][1] if self.scrapes else 0,
        }


async def generate(
    url: str,
    pairs: Sequence[tuple[str, bytes]],
    *,
    rate: float,
    duration: float,
    connections: int = DEFAULT_CONNECTIONS,
    scrape_url: str | None = None,
    scrape_interval: float = 1.0,
) -> Result:
    """Send `rate * duration` requests, request i at t0 + i / rate, whatever happened to the earlier ones."""
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    latencies = [0.0] * total
    lag = [0.0] * total
    statuses: Counter[int] = Counter()
    scrapes: list[tuple[float, int]] = []
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, intended: float) -> None:
            signature, body = pairs[i % len(pairs)]
            lag[i] = loop.time() - intended
            status = -1
            try:
                headers = {"Content-Type": "application/json", "X-Rutter-Signature": signature}
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            latencies[i] = loop.time() - intended
            statuses[status] += 1

        stop_scraping = asyncio.Event()

        async def scrape() -> None:
            assert scrape_url is not None
            async with aiohttp.ClientSession() as scraper:  # its own connection, as Prometheus has
                next_at = loop.time()
                while not stop_scraping.is_set():
                    started = loop.time()
                    async with scraper.get(scrape_url) as resp:
                        size = len(await resp.read())
                    scrapes.append((loop.time() - started, size))
                    next_at += scrape_interval
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_scraping.wait(), max(0.0, next_at - loop.time()))

        scraper_task = asyncio.create_task(scrape()) if scrape_url else None
        t0 = loop.time() + 0.05
        wall_start = time.perf_counter()
        i = 0
        while i < total:
            now = loop.time()
            while i < total and t0 + i / rate <= now:
                task = loop.create_task(one(i, t0 + i / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        await asyncio.gather(*list(tasks))
        wall = time.perf_counter() - wall_start
        stop_scraping.set()
        if scraper_task is not None:
            await scraper_task
    return Result(latencies, statuses, lag, scrapes, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--scrape-url")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parser.parse_args()
    pairs = load(args.corpus)
    result = asyncio.run(
        generate(
            args.url,
            pairs,
            rate=args.rate,
            duration=args.duration,
            connections=args.connections,
            scrape_url=args.scrape_url,
            scrape_interval=args.scrape_interval,
        )
    )
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()

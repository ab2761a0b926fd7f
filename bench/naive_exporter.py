"""The naive exporter bench/economy.py compares the daemon with: what one might write first. Every 5 minutes it lists
the connections and fetches every connection's status, spreading the requests over the interval so that Rutter's
500 requests per 10 s are never exceeded; the health it shows is the last status seen.

Standalone, against a Rutter (or the simulator) on the wall clock:

    .venv/bin/python bench/naive_exporter.py --api-url http://127.0.0.1:8090 --passes 1
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from corpus import api_headers

from monitor.domain import Health, derive_health


def health_of(status: dict[str, Any]) -> Health:
    """Health from a `GET /connections/status` body, with the daemon's precedence."""
    s = status.get("status") or {}
    healthy = s.get("is_healthy")
    return derive_health(
        is_disabled=bool((s.get("disabled_status") or {}).get("is_disabled")),
        needs_update=bool((s.get("needs_update_status") or {}).get("needs_update")),
        is_unhealthy=healthy is False,
    )


class NaiveExporter:
    """Polls every connection's status once per interval; `tick` is called once per second of its clock."""

    def __init__(
        self, session: aiohttp.ClientSession, api_url: str, client_id: str, secret: str, interval: float = 300.0
    ) -> None:
        self._session = session
        self._base = f"{api_url.rstrip('/')}/versioned"
        self._headers = api_headers(client_id, secret)
        self._interval = timedelta(seconds=interval)
        self._next_pass: datetime | None = None
        self._queue: list[tuple[str, str]] = []
        self._per_second = 1
        self.health: dict[str, Health] = {}
        self.requests: Counter[str] = Counter()
        self.passes = 0

    @property
    def pending(self) -> int:
        """Statuses of the current pass not fetched yet."""
        return len(self._queue)

    async def tick(self, now: datetime) -> None:
        """Start a pass when one is due, then fetch this second's share of the pass's statuses."""
        if self._next_pass is None or now >= self._next_pass:
            self._next_pass = now + self._interval
            listed = await self._get("/connections", {"status": "any"}, "list")
            self._queue = [(c["id"], c["access_token"]) for c in listed.get("connections", [])]
            self._per_second = max(1, math.ceil(len(self._queue) / self._interval.total_seconds()))
            self.passes += 1
        batch, self._queue = self._queue[: self._per_second], self._queue[self._per_second :]
        bodies = await asyncio.gather(
            *(self._get("/connections/status", {"access_token": t}, "status") for _, t in batch)
        )
        for (connection_id, _), body in zip(batch, bodies, strict=True):
            if "status" in body:
                self.health[connection_id] = health_of(body)

    async def _get(self, path: str, params: dict[str, str], kind: str) -> dict[str, Any]:
        self.requests[kind] += 1
        async with self._session.get(self._base + path, params=params, headers=self._headers) as resp:
            self.requests[str(resp.status)] += 1
            if resp.status != 200:
                await resp.read()
                return {}
            body: dict[str, Any] = await resp.json()
            return body


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-url", required=True, help="Rutter's base URL, without /versioned")
    parser.add_argument("--client-id", default="sim-client-id")
    parser.add_argument("--client-secret", default="sim-client-secret")
    parser.add_argument("--interval", type=float, default=300.0)
    parser.add_argument("--passes", type=int, default=1)
    args = parser.parse_args()
    async with aiohttp.ClientSession() as session:
        exporter = NaiveExporter(session, args.api_url, args.client_id, args.client_secret, args.interval)
        started = time.monotonic()
        second = 0
        while exporter.passes < args.passes or exporter.pending:
            await exporter.tick(datetime.now().astimezone())
            second += 1
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
        print(dict(Counter(exporter.health.values())), dict(exporter.requests))


if __name__ == "__main__":
    asyncio.run(main())

"""The webhook mix the ingest benchmarks send: signed bodies as Rutter sends them, mostly entity webhooks of 1-3 KB,
some connection lifecycle codes, and about 5% exact duplicates of a recent body (Rutter's retries, double deliveries).

Bodies are written one per line, `signature<TAB>body`, so that wrk's Lua script and the open-loop generator read the
same file. Entity bodies carry a unique object id, so a body is a duplicate only where the mix says so."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from monitor.rutter.signature import sign
from monitor.simulator.platforms import ENTITY_CODES, category

LIFECYCLE_MIX: tuple[tuple[str, float], ...] = (
    ("CONNECTION_UPDATED", 0.3),
    ("CONNECTION_NEEDS_UPDATE", 0.2),
    ("CONNECTION_DISABLED", 0.2),
    ("HISTORICAL_UPDATE", 0.2),
    ("INITIAL_UPDATE", 0.1),
)


@dataclass(frozen=True, slots=True)
class Conn:
    id: str
    access_token: str
    platform: str


@dataclass(frozen=True, slots=True)
class Mix:
    lifecycle_share: float = 0.03
    duplicate_share: float = 0.05
    min_bytes: int = 1024
    max_bytes: int = 3072
    duplicate_lookback: int = 200  # a duplicate repeats one of the last N bodies
    lifecycle_codes: tuple[tuple[str, float], ...] = LIFECYCLE_MIX  # (code, weight) of the lifecycle share


def api_headers(client_id: str, secret: str) -> dict[str, str]:
    """Rutter's Basic auth and version header."""
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}", "X-Rutter-Version": "2024-08-31"}


async def fetch_connections(api_url: str, client_id: str, secret: str) -> list[Conn]:
    """Every connection the simulator lists (one `GET /connections?status=any`)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{api_url}/versioned/connections", params={"status": "any"}, headers=api_headers(client_id, secret)
        ) as resp,
    ):
        resp.raise_for_status()
        body = await resp.json()
    return [Conn(c["id"], c["access_token"], c["platform"]) for c in body["connections"]]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line_item(rng: random.Random, n: int) -> dict[str, Any]:
    quantity = rng.randint(1, 5)
    price = round(rng.uniform(2, 400), 2)
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128))),
        "platform_id": str(rng.randint(10**9, 10**10)),
        "product_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "title": f"Item {n} {rng.choice(['Blue', 'Green', 'Oak', 'Steel'])} {rng.choice(['Mug', 'Shirt', 'Lamp'])}",
        "sku": f"SKU-{rng.randint(10000, 99999)}",
        "quantity": quantity,
        "unit_price": price,
        "total_amount": round(price * quantity, 2),
        "tax_lines": [{"rate": 0.08, "amount": round(price * quantity * 0.08, 2)}],
    }


def entity_body(rng: random.Random, conn: Conn, code: str, at: datetime, size: int) -> dict[str, Any]:
    """An entity webhook envelope around an object grown with line items until the body is about `size` bytes."""
    kind = code.rsplit("_", 1)[0]
    obj: dict[str, Any] = {
        "id": str(uuid.UUID(int=rng.getrandbits(128))),
        "platform_id": str(rng.randint(10**9, 10**10)),
        "created_at": _iso(at - timedelta(minutes=rng.randint(0, 10_000))),
        "updated_at": _iso(at),
        "currency_code": "USD",
        "status": rng.choice(["open", "paid", "fulfilled"]),
        "customer": {"id": str(uuid.UUID(int=rng.getrandbits(128))), "email": f"buyer{rng.randint(1, 10**6)}@e.com"},
        "line_items": [],
    }
    body = {"type": kind, "code": code, "connection_id": conn.id, "access_token": conn.access_token, kind.lower(): obj}
    n = 0
    while len(json.dumps(body, separators=(",", ":"))) < size - 120:
        n += 1
        obj["line_items"].append(_line_item(rng, n))
    obj["total_amount"] = round(sum(item["total_amount"] for item in obj["line_items"]), 2)
    return body


def lifecycle_body(rng: random.Random, conn: Conn, code: str) -> dict[str, Any]:
    """A flat `type: CONNECTION` webhook with its code's extras (small, as Rutter sends them)."""
    body: dict[str, Any] = {
        "type": "CONNECTION",
        "code": code,
        "connection_id": conn.id,
        "access_token": conn.access_token,
    }
    if code == "CONNECTION_NEEDS_UPDATE":
        body["update_url"] = f"https://link.rutterapi.com/connection/{conn.id}"
    elif code == "CONNECTION_UPDATED":
        body["store_unique_id"] = f"store-{conn.id[:8]}"
    elif code == "HISTORICAL_UPDATE":
        body["entities_included_to_time_range"] = [{"platformEntity": "ORDERS", "xMonthsAgo": rng.choice([6, 12])}]
    return body


@dataclass(frozen=True, slots=True)
class Corpus:
    path: Path
    count: int
    kinds: dict[str, int]
    mean_bytes: float
    entity_bytes: tuple[int, int]

    def describe(self) -> str:
        share = {kind: f"{100 * n / self.count:.1f}%" for kind, n in sorted(self.kinds.items())}
        low, high = self.entity_bytes
        return (
            f"{self.count} bodies ({', '.join(f'{k} {v}' for k, v in share.items())}); "
            f"entity bodies {low}-{high} B, mean body {self.mean_bytes:.0f} B"
        )


def build(path: Path, conns: Sequence[Conn], count: int, *, seed: int, secret: str, mix: Mix | None = None) -> Corpus:
    """Write `count` signed bodies to `path`."""
    mix = mix or Mix()
    rng = random.Random(seed)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    codes, weights = zip(*mix.lifecycle_codes, strict=True)
    recent: list[bytes] = []
    kinds: Counter[str] = Counter()
    total = 0
    low, high = 1 << 30, 0
    with path.open("w") as out:
        for _ in range(count):
            roll = rng.random()
            if roll < mix.duplicate_share and recent:
                raw = rng.choice(recent[-mix.duplicate_lookback :])
                kinds["duplicate"] += 1
            else:
                conn = rng.choice(conns)
                if roll < mix.duplicate_share + mix.lifecycle_share:
                    payload = lifecycle_body(rng, conn, rng.choices(codes, weights)[0])
                    kinds["lifecycle"] += 1
                else:
                    code = rng.choice(ENTITY_CODES[category(conn.platform)])
                    payload = entity_body(rng, conn, code, at, rng.randint(mix.min_bytes, mix.max_bytes))
                    kinds["entity"] += 1
                raw = json.dumps(payload, separators=(",", ":")).encode()
                if payload["type"] != "CONNECTION":
                    low, high = min(low, len(raw)), max(high, len(raw))
                recent.append(raw)
                if len(recent) > 4 * mix.duplicate_lookback:
                    del recent[: 2 * mix.duplicate_lookback]
            total += len(raw)
            out.write(f"{sign(raw, secret)}\t{raw.decode()}\n")
    return Corpus(path, count, dict(kinds), total / max(1, count), (low, high))


def load(path: Path) -> list[tuple[str, bytes]]:
    """(signature, body) pairs of a corpus file, in order."""
    pairs = []
    with path.open() as f:
        for line in f:
            signature, _, body = line.rstrip("\n").partition("\t")
            pairs.append((signature, body.encode()))
    return pairs

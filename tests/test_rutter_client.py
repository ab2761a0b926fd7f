"""The Rutter API client against a real aiohttp server on 127.0.0.1 that answers like Rutter."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import traceback
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
import stamina
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from monitor.clock import FakeClock
from monitor.domain import ConnectionDetails, Listing, StatusSnapshot
from monitor.ratelimit import SlidingWindowLimiter
from monitor.rutter.client import RutterClient
from monitor.rutter.errors import (
    ConnectionDisabledError,
    InvalidCredentialsError,
    MalformedResponseError,
    NeedsUpdateError,
    NotReadyError,
    RejectedError,
    RetryableError,
    RutterError,
    redact,
)
from monitor.rutter.parse import iter_listing, parse_listing_item, parse_status

CLIENT_ID = "3f0c4b9e-5d7a-4c51-9d8e-0b1a2c3d4e5f"
CLIENT_SECRET = "sk_prod_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
TOKEN = "0b6b9a3e-7f51-4d2c-9a8e-5c4d3b2a1f09"
VERSION = "2024-08-31"
CONN_ID = "a1f1e1d1-1c1b-4a19-8f7e-6d5c4b3a2910"

LIST_BODY: dict[str, Any] = {
    "connections": [
        {
            "id": CONN_ID,
            "access_token": TOKEN,
            "link_url": f"https://link.rutterapi.com/connection/{CONN_ID}",
            "platform": "SHOPIFY",
            "status": "active",
            "name": "Acme Outdoor",
            "created_at": "2025-11-02T08:15:30.123Z",
            "updated_at": "2025-12-30T23:59:59.000Z",
        },
        {
            "id": "b2e2d2c2-2b2a-4929-9e8d-7c6b5a493821",
            "access_token": "7d3f2a1b-9c8e-4f6d-a5b4-c3d2e1f0a9b8",
            "link_url": "https://link.rutterapi.com/connection/b2e2d2c2-2b2a-4929-9e8d-7c6b5a493821",
            "platform": "NETSUITE",
            "status": "not_ready",
            "name": "Globex Holdings",
            "created_at": "2025-12-31T22:00:00+02:00",
            "updated_at": "2025-12-31T20:05:00Z",
        },
        {  # a platform Rutter added after this code was written, with fields nobody documented yet
            "id": "c3d3c3b3-3a39-4838-8d7c-6b5a49382716",
            "access_token": "e4c3b2a1-0f9e-4d8c-b7a6-958473625140",
            "link_url": "https://link.rutterapi.com/connection/c3d3c3b3-3a39-4838-8d7c-6b5a49382716",
            "platform": "HYPERCART_NEXT",
            "status": "some_future_status",
            "name": "Initech",
            "created_at": "2025-12-01T00:00:00.000000001Z",
            "updated_at": None,
            "region": "eu-west-1",
            "metadata": {"tags": ["beta"], "tier": 3},
        },
        {  # the 2023-03-14 shape: no status, no name
            "id": "d4c4b4a4-4948-4747-8c6b-5a4938271605",
            "access_token": "f5e4d3c2-b1a0-4e9d-8c7b-6a5948372615",
            "link_url": "https://link.rutterapi.com/connection/d4c4b4a4-4948-4747-8c6b-5a4938271605",
            "platform": "QUICKBOOKS",
            "created_at": "2023-04-01T10:00:00.000Z",
            "updated_at": "2023-04-02T10:00:00.000Z",
        },
    ]
}

LIST_EXPECTED = [
    Listing(
        id=CONN_ID,
        access_token=TOKEN,
        platform="SHOPIFY",
        status="active",
        name="Acme Outdoor",
        link_url=f"https://link.rutterapi.com/connection/{CONN_ID}",
        created_at=datetime(2025, 11, 2, 8, 15, 30, 123000, tzinfo=UTC),
        updated_at=datetime(2025, 12, 30, 23, 59, 59, tzinfo=UTC),
    ),
    Listing(
        id="b2e2d2c2-2b2a-4929-9e8d-7c6b5a493821",
        access_token="7d3f2a1b-9c8e-4f6d-a5b4-c3d2e1f0a9b8",
        platform="NETSUITE",
        status="not_ready",
        name="Globex Holdings",
        link_url="https://link.rutterapi.com/connection/b2e2d2c2-2b2a-4929-9e8d-7c6b5a493821",
        created_at=datetime(2025, 12, 31, 20, 0, tzinfo=UTC),
        updated_at=datetime(2025, 12, 31, 20, 5, tzinfo=UTC),
    ),
    Listing(
        id="c3d3c3b3-3a39-4838-8d7c-6b5a49382716",
        access_token="e4c3b2a1-0f9e-4d8c-b7a6-958473625140",
        platform="HYPERCART_NEXT",
        status="some_future_status",
        name="Initech",
        link_url="https://link.rutterapi.com/connection/c3d3c3b3-3a39-4838-8d7c-6b5a49382716",
        created_at=datetime(2025, 12, 1, tzinfo=UTC),
        updated_at=None,
    ),
    Listing(
        id="d4c4b4a4-4948-4747-8c6b-5a4938271605",
        access_token="f5e4d3c2-b1a0-4e9d-8c7b-6a5948372615",
        platform="QUICKBOOKS",
        status=None,
        name=None,
        link_url="https://link.rutterapi.com/connection/d4c4b4a4-4948-4747-8c6b-5a4938271605",
        created_at=datetime(2023, 4, 1, 10, tzinfo=UTC),
        updated_at=datetime(2023, 4, 2, 10, tzinfo=UTC),
    ),
]

# GET /connections/status, 2024-08-31: a QuickBooks connection in its second history batch.
STATUS_BODY: dict[str, Any] = {
    "connection": {"id": CONN_ID, "orgId": "org_5e4d3c2b", "platform": "QUICKBOOKS"},
    "status": {
        "last_sync_completed_at": "2026-01-01T09:30:00.000Z",
        "is_healthy": True,
        "is_ready": True,
        "link_url": f"https://link.rutterapi.com/connection/{CONN_ID}",
        "platform": "QUICKBOOKS",
        "created_at": "2025-12-31T12:00:00.000Z",
        "needs_update_status": {"needs_update": False},
        "disabled_status": {"is_disabled": False, "disabled_reason": None},
        "historical_sync_status": {
            "historical_sync_completed": False,
            "total": {
                "expenses": {
                    "oldest_entity_date": "2025-06-01T00:00:00.000Z",
                    "newest_entity_date": "2025-12-31T00:00:00.000Z",
                    "ready": True,
                    "synced_count": 1200,
                },
                "invoices": {
                    "oldest_entity_date": "2025-09-01T00:00:00.000Z",
                    "newest_entity_date": "2025-12-31T00:00:00.000Z",
                    "ready": False,
                    "synced_count": 300,
                },
            },
            "num_batches_completed": 1,
            "synced_balance_sheets_count": None,
            "synced_cash_flows_count": None,
            "synced_income_statements_count": 12,
            "synced_orders_count": None,
            "synced_transactions_count": 40,
            "expected_entity_counts": [
                {"batch_num": 1, "entity": "EXPENSES", "is_estimate": False, "count": 1200},
                {"batch_num": 2, "entity": "INVOICES", "is_estimate": True, "count": 900},
            ],
            "batches": [
                {
                    "batch_num": 1,
                    "progress_info": {
                        "expenses": {
                            "status": "COMPLETED",
                            "oldest_batch_entity_date": "2025-06-01T00:00:00.000Z",
                            "newest_batch_entity_date": "2025-12-31T00:00:00.000Z",
                        }
                    },
                    "config": {"timeFrameInMonths": 6, "entities": {"EXPENSES": "REQUIRED"}},
                },
                {
                    "batch_num": 2,
                    "progress_info": {
                        "invoices": {
                            "status": "IN_PROGRESS",
                            "oldest_batch_entity_date": "2025-09-01T00:00:00.000Z",
                            "newest_batch_entity_date": "2025-12-31T00:00:00.000Z",
                        }
                    },
                    "config": None,
                },
            ],
            "some_new_progress_field": {"eta": "soon"},
        },
        "another_new_field": [1, 2, 3],
    },
}

STATUS_EXPECTED = StatusSnapshot(
    connection_id=CONN_ID,
    platform="QUICKBOOKS",
    is_ready=True,
    needs_update=False,
    is_disabled=False,
    historical_sync_completed=False,
    is_healthy=True,
    disabled_reason=None,
    link_url=f"https://link.rutterapi.com/connection/{CONN_ID}",
    created_at=datetime(2025, 12, 31, 12, tzinfo=UTC),
    last_sync_completed_at=datetime(2026, 1, 1, 9, 30, tzinfo=UTC),
    num_batches_completed=1,
    synced_count=1200 + 300 + 12 + 40,
)

# The 2023-03-14 shape (no is_healthy), disabled with the TS artifact "null" as reason, never synced.
OLD_STATUS_BODY: dict[str, Any] = {
    "connection": {"id": CONN_ID, "orgId": "org_5e4d3c2b", "platform": "SHOPIFY"},
    "status": {
        "last_sync_completed_at": None,
        "is_ready": False,
        "link_url": f"https://link.rutterapi.com/connection/{CONN_ID}",
        "platform": "SHOPIFY",
        "created_at": "2023-05-05T05:05:05Z",
        "needs_update_status": {"needs_update": True},
        "disabled_status": {"is_disabled": True, "disabled_reason": "null"},
        "historical_sync_status": {
            "historical_sync_completed": False,
            "total": {},
            "num_batches_completed": None,
            "synced_orders_count": None,
            "batches": [],
        },
    },
}

DETAILS_BODY: dict[str, Any] = {
    "connection": {
        "id": CONN_ID,
        "store_unique_id": "acme-outdoor.myshopify.com",
        "estimated_completed_at": None,
        "last_sync_completed_at": "2026-01-01T09:30:00.000Z",
        "last_sync_started_at": "2026-01-01T09:00:00.000Z",
        "oldest_order_date": "2024-01-01T00:00:00.000Z",
        "newest_order_date": "2025-12-31T23:00:00.000Z",
        "disabled": False,
        "link_url": f"https://link.rutterapi.com/connection/{CONN_ID}",
        "needs_update": False,
        "platform": "SHOPIFY",
        "initial_orders_synced_count": 5400,
        "store_domain": "acme-outdoor.myshopify.com",
        "store_name": "Acme Outdoor",
        "unavailable_objects": [],
        "created_at": "2025-11-02T08:15:30.123Z",
        "future_field": {"x": 1},
    }
}

DETAILS_EXPECTED = ConnectionDetails(
    id=CONN_ID,
    platform="SHOPIFY",
    store_name="Acme Outdoor",
    store_domain="acme-outdoor.myshopify.com",
    created_at=datetime(2025, 11, 2, 8, 15, 30, 123000, tzinfo=UTC),
    last_sync_completed_at=datetime(2026, 1, 1, 9, 30, tzinfo=UTC),
    last_sync_started_at=datetime(2026, 1, 1, 9, tzinfo=UTC),
)


def rutter_error(code: str, message: str = "see docs", error_type: str = "CONNECTION_ERROR") -> dict[str, str]:
    return {"error_type": error_type, "error_code": code, "error_message": message}


# ------------------------------------------------------------------------------------------------------------
# A small Rutter: scripted replies per path, then a default; it records what it was sent, and when.


class AutoClock(FakeClock):
    """A FakeClock that moves itself by whatever is slept, so no driver is needed; it records each sleep.

    With `auto` off it is a plain FakeClock that the test drives with advance()."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []
        self.auto = True

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self.auto:
            await super().sleep(seconds)
            return
        if seconds > 0:
            self.set(self.now() + timedelta(seconds=seconds))
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: Any = None  # a JSON value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # wait until the test ends: the client's timeout fires first
    truncate: bool = False  # send half of the body, then drop the connection


@dataclass(frozen=True, slots=True)
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float  # seconds of clock time since the server started


class FakeRutter:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.start = clock.now()
        self.seen: list[Seen] = []
        self.script: dict[str, deque[Reply]] = {}
        self.defaults: dict[str, Reply] = {
            "/connections": Reply(body=LIST_BODY),
            "/connections/status": Reply(body=STATUS_BODY),
            "/connections/access_token": Reply(body=DETAILS_BODY),
        }
        self.release = asyncio.Event()
        self.base_url = ""  # set once the server listens
        self.arrived = asyncio.Event()
        self.expected_auth = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()

    async def wait_seen(self, count: int) -> None:
        """Until `count` requests have arrived (real I/O takes loop turns; no clock time passes)."""
        async with asyncio.timeout(5):
            while len(self.seen) < count:
                self.arrived.clear()
                await self.arrived.wait()

    def queue(self, path: str, *replies: Reply) -> None:
        self.script.setdefault(path, deque()).extend(replies)

    def app(self) -> web.Application:
        app = web.Application()
        for path in self.defaults:
            app.router.add_get("/versioned" + path, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/versioned")
        at = (self.clock.now() - self.start).total_seconds()
        self.seen.append(Seen(path, dict(request.query), dict(request.headers), at))
        self.arrived.set()
        if request.headers.get("Authorization") != self.expected_auth:
            return web.json_response(rutter_error("INVALID_CREDENTIALS", "Invalid client credentials"), status=401)
        queued = self.script.get(path)
        reply = queued.popleft() if queued else self.defaults[path]
        if reply.hang:
            await self.release.wait()
        if reply.truncate:
            body = json.dumps(reply.body).encode()
            response = web.StreamResponse(status=reply.status)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        if isinstance(reply.body, bytes):
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


class Observed:
    """The metrics hook: records every attempt."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, endpoint: str, status: str, seconds: float) -> None:
        self.calls.append((endpoint, status, seconds))

    def statuses(self) -> list[str]:
        return [status for _, status, _ in self.calls]


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    """stamina's test mode: no backoff sleeps, and each client keeps its own number of attempts."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def clock() -> AutoClock:
    return AutoClock()


@pytest.fixture
async def rutter(clock: AutoClock) -> AsyncIterator[FakeRutter]:
    fake = FakeRutter(clock)
    server = TestServer(fake.app(), host="127.0.0.1", port=0)
    await server.start_server()
    fake.base_url = str(server.make_url("/versioned"))
    yield fake
    fake.release.set()
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@dataclass
class Harness:
    client: RutterClient
    rutter: FakeRutter
    observed: Observed
    clock: AutoClock


@pytest.fixture
def make(rutter: FakeRutter, session: aiohttp.ClientSession, clock: AutoClock) -> Any:
    def build(
        *, limit: int = 100, attempts: int = 4, timeout: float = 5.0, secret: str = CLIENT_SECRET, **kw: Any
    ) -> Harness:
        observed = Observed()
        client = RutterClient(
            session,
            base_url=kw.pop("base_url", rutter.base_url),
            client_id=CLIENT_ID,
            client_secret=secret,
            api_version=VERSION,
            limiter=SlidingWindowLimiter(limit, 10.0, clock=clock),
            observer=observed,
            timeout=timeout,
            attempts=attempts,
            clock=clock,
        )
        return Harness(client, rutter, observed, clock)

    return build


# ------------------------------------------------------------------------------------------------------------
# Requests and shapes


async def test_every_request_carries_basic_auth_the_version_and_the_documented_query(make: Any) -> None:
    """Each endpoint is called on its documented path with Basic auth, X-Rutter-Version and its query."""
    h = make()
    await h.client.list_connections()
    await h.client.fetch_status(TOKEN)
    await h.client.fetch_connection(TOKEN)
    assert [(s.path, s.query) for s in h.rutter.seen] == [
        ("/connections", {"status": "any"}),
        ("/connections/status", {"access_token": TOKEN}),
        ("/connections/access_token", {"access_token": TOKEN}),
    ]
    for seen in h.rutter.seen:
        assert seen.headers["Authorization"] == h.rutter.expected_auth
        assert seen.headers["X-Rutter-Version"] == VERSION
    assert [(e, s) for e, s, _ in h.observed.calls] == [
        ("list_connections", "200"),
        ("connection_status", "200"),
        ("connection", "200"),
    ]


async def test_list_is_parsed_exactly_with_unknown_platforms_extra_fields_and_old_items(make: Any) -> None:
    """Every documented list field is read; new platforms and statuses are kept; extra fields are ignored."""
    listings = await make().client.list_connections()
    assert listings == LIST_EXPECTED


async def test_list_passes_the_status_filter(make: Any) -> None:
    """The status filter is sent as the `status` query parameter."""
    h = make()
    await h.client.list_connections("unhealthy")
    assert h.rutter.seen[0].query == {"status": "unhealthy"}


async def test_status_is_parsed_exactly(make: Any) -> None:
    """The 2024-08-31 status body becomes the StatusSnapshot the docs describe, synced counts summed."""
    assert await make().client.fetch_status(TOKEN) == STATUS_EXPECTED


async def test_old_status_without_is_healthy_and_with_a_null_string_reason(make: Any) -> None:
    """Before 2024-08-31 is_healthy is absent (None), and a "null" disabled_reason string means no reason."""
    h = make()
    h.rutter.queue("/connections/status", Reply(body=OLD_STATUS_BODY))
    snapshot = await h.client.fetch_status(TOKEN)
    assert snapshot == StatusSnapshot(
        connection_id=CONN_ID,
        platform="SHOPIFY",
        is_ready=False,
        needs_update=True,
        is_disabled=True,
        historical_sync_completed=False,
        is_healthy=None,
        disabled_reason=None,
        link_url=f"https://link.rutterapi.com/connection/{CONN_ID}",
        created_at=datetime(2023, 5, 5, 5, 5, 5, tzinfo=UTC),
        last_sync_completed_at=None,
        num_batches_completed=None,
        synced_count=None,
    )


def test_a_standardized_disabled_reason_is_kept_as_rutter_spells_it() -> None:
    """A reason with spaces ("FAILED TO AUTHENTICATE") survives parsing unchanged."""
    body = json.loads(json.dumps(OLD_STATUS_BODY))
    body["status"]["disabled_status"]["disabled_reason"] = "FAILED TO AUTHENTICATE"
    assert parse_status(body).disabled_reason == "FAILED TO AUTHENTICATE"


async def test_connection_details_are_parsed_exactly(make: Any) -> None:
    """Fetch a Connection gives the store name and domain and the sync times."""
    assert await make().client.fetch_connection(TOKEN) == DETAILS_EXPECTED


def big_list(n: int) -> bytes:
    platforms = ["SHOPIFY", "QUICKBOOKS", "NETSUITE", "XERO", "AMAZON", "NEW_PLATFORM"]
    items = [
        {
            "id": f"00000000-0000-4000-8000-{i:012d}",
            "access_token": f"11111111-0000-4000-8000-{i:012d}",
            "link_url": f"https://link.rutterapi.com/connection/00000000-0000-4000-8000-{i:012d}",
            "platform": platforms[i % len(platforms)],
            "status": ["active", "unhealthy", "not_ready", "needs_reauth", "disabled"][i % 5],
            "name": f"Merchant {i} \u00e9\u4e2d",
            "created_at": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00.{i % 1000:03d}Z",
            "updated_at": None if i % 7 else "2026-01-01T00:00:00Z",
            "extra": {"n": i, "f": i / 3},
        }
        for i in range(n)
    ]
    return json.dumps({"connections": items}).encode()


async def test_a_large_list_streams_to_the_same_result_as_json_loads(make: Any) -> None:
    """20k connections parsed as they stream in equal the same body parsed whole with json.loads."""
    body = big_list(20_000)
    h = make()
    h.rutter.queue("/connections", Reply(body=body))
    streamed = await h.client.list_connections()
    assert streamed == [parse_listing_item(item) for item in json.loads(body)["connections"]]
    assert len(streamed) == 20_000


class ChunkReader:
    """An async byte stream served in small chunks, recording how far it has been read."""

    def __init__(self, data: bytes, chunk: int = 4096) -> None:
        self.data = data
        self.chunk = chunk
        self.pos = 0

    async def read(self, n: int = -1) -> bytes:
        size = self.chunk if n < 0 else min(n, self.chunk)
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out


async def test_listing_items_come_out_before_the_body_is_read_whole() -> None:
    """iter_listing yields the first connection after reading only the first chunks of a 2k-item body."""
    body = big_list(2_000)
    reader = ChunkReader(body)
    items = iter_listing(reader)
    first = await anext(items)
    assert first.id == "00000000-0000-4000-8000-000000000000"
    assert reader.pos < len(body) // 4
    rest = [item async for item in items]
    assert len(rest) == 1_999


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"connections": []}', []),
        (b'{"connections": [], "next_cursor": null}', []),
    ],
)
async def test_an_empty_fleet_is_an_empty_list(body: bytes, expected: list[Listing]) -> None:
    """A body with an empty connections array is an empty fleet."""
    assert [item async for item in iter_listing(ChunkReader(body))] == expected


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"data": []}',
        b"[]",
        b'{"connections": [{"id": "x", "access_token": "y", "platform": "SHOPIFY"}',
        b"<html>Bad gateway</html>",
        b'{"connections": [{"platform": "SHOPIFY", "access_token": "y"}]}',
        b'{"connections": ["not an object"]}',
        json.dumps({"padding": "x" * 100_000}).encode(),
    ],
)
async def test_a_list_body_without_the_connections_array_is_malformed(body: bytes) -> None:
    """A body without the connections array, or an item without id, is an error, never an empty fleet."""
    with pytest.raises(MalformedResponseError):
        _ = [item async for item in iter_listing(ChunkReader(body))]


async def test_a_malformed_2xx_is_not_retried(make: Any) -> None:
    """A 200 whose body is not JSON raises MalformedResponseError after one request."""
    h = make()
    h.rutter.queue("/connections/status", Reply(body=b"<html>maintenance</html>"))
    with pytest.raises(MalformedResponseError) as info:
        await h.client.fetch_status(TOKEN)
    assert info.value.status == 200
    assert len(h.rutter.seen) == 1


# ------------------------------------------------------------------------------------------------------------
# Retries, Retry-After and the rate budget


@pytest.mark.parametrize("path", ["/connections", "/connections/status", "/connections/access_token"])
async def test_429_452_and_500_are_retried_until_success(make: Any, path: str) -> None:
    """Rutter's rate limit, the platform's rate limit and a server error are retried, then the call works."""
    h = make(attempts=4)
    h.rutter.queue(
        path,
        Reply(429, rutter_error("RATE_LIMITED", "Too many requests", "RATE_LIMIT_ERROR")),
        Reply(452, rutter_error("PLATFORM_RATE_LIMITED", "Platform rate limit", "PLATFORM_ERROR")),
        Reply(500, b"Internal Server Error"),
    )
    call = {
        "/connections": h.client.list_connections,
        "/connections/status": lambda: h.client.fetch_status(TOKEN),
        "/connections/access_token": lambda: h.client.fetch_connection(TOKEN),
    }[path]
    result = await call()
    assert result
    assert h.observed.statuses() == ["429", "452", "500", "200"]
    assert len(h.rutter.seen) == 4
    assert h.clock.slept == []  # no Retry-After: stamina's (test-mode) backoff only


async def test_retries_stop_after_the_attempts_with_a_retryable_error(make: Any) -> None:
    """When every attempt fails transiently, the last failure is raised as a RetryableError."""
    h = make(attempts=3)
    h.rutter.queue("/connections/status", *[Reply(503, rutter_error("SERVICE_UNAVAILABLE", "down"))] * 5)
    with pytest.raises(RetryableError) as info:
        await h.client.fetch_status(TOKEN)
    assert info.value.status == 503
    assert info.value.error_code == "SERVICE_UNAVAILABLE"
    assert len(h.rutter.seen) == 3
    assert h.observed.statuses() == ["503", "503", "503"]


async def test_retry_after_seconds_is_waited_out_on_the_clock(make: Any) -> None:
    """A 429 with Retry-After: 7 makes the next attempt wait 7 s of clock time, no more and no less."""
    h = make()
    h.rutter.queue("/connections/status", Reply(429, rutter_error("RATE_LIMITED"), {"Retry-After": "7"}))
    before = h.clock.now()
    assert await h.client.fetch_status(TOKEN) == STATUS_EXPECTED
    assert h.clock.slept == [7.0]
    assert h.clock.now() - before == timedelta(seconds=7)
    assert [s.at for s in h.rutter.seen] == [0.0, 7.0]


async def test_retry_after_as_an_http_date_is_honoured(make: Any) -> None:
    """Retry-After may be an HTTP-date: the client waits until then."""
    h = make()
    when = format_datetime(h.clock.now() + timedelta(seconds=30), usegmt=True)
    h.rutter.queue("/connections", Reply(452, rutter_error("PLATFORM_RATE_LIMITED"), {"Retry-After": when}))
    await h.client.list_connections()
    assert h.clock.slept == [30.0]
    assert [s.at for s in h.rutter.seen] == [0.0, 30.0]


async def test_a_retry_after_too_long_to_wait_is_handed_to_the_caller(make: Any) -> None:
    """A Retry-After of an hour is not waited inside the call: the caller gets it on the RetryableError."""
    h = make()
    h.rutter.queue("/connections", Reply(429, rutter_error("RATE_LIMITED"), {"Retry-After": "3600"}))
    with pytest.raises(RetryableError) as info:
        await h.client.list_connections()
    assert info.value.retry_after == 3600.0
    assert len(h.rutter.seen) == 1
    assert h.clock.slept == []


async def test_every_attempt_takes_a_slot_of_the_rate_budget(make: Any) -> None:
    """Retries count against the budget: with 2 per 10 s, the third attempt waits for the window to move."""
    h = make(limit=2)
    h.rutter.queue("/connections/status", Reply(429, rutter_error("RATE_LIMITED")), Reply(500, b"oops"))
    await h.client.fetch_status(TOKEN)
    assert [s.at for s in h.rutter.seen] == [0.0, 0.0, 10.0]


async def test_concurrent_calls_never_exceed_the_budget_in_any_window(make: Any) -> None:
    """Twelve concurrent calls with 5 per 10 s reach Rutter as 5, 5 and 2, one window apart."""
    h = make(limit=5)
    h.clock.auto = False
    calls = asyncio.gather(*(h.client.fetch_status(TOKEN) for _ in range(12)))
    for seen in (5, 10):
        await h.rutter.wait_seen(seen)
        await h.clock.advance(10.0)
    assert await calls == [STATUS_EXPECTED] * 12
    assert [s.at for s in h.rutter.seen] == [0.0] * 5 + [10.0] * 5 + [20.0] * 2


async def test_a_list_cut_off_midway_is_fetched_again_whole(make: Any) -> None:
    """A connection dropped midway through the list body is transient: the retry gets the whole list."""
    h = make()
    h.rutter.queue("/connections", Reply(body=json.loads(big_list(3_000)), truncate=True))
    h.rutter.queue("/connections", Reply(body=LIST_BODY))
    assert await h.client.list_connections() == LIST_EXPECTED
    assert h.observed.statuses() == ["error", "200"]


async def test_a_timeout_is_retried_and_then_raised_as_retryable(make: Any) -> None:
    """A request past the timeout counts as "timeout" and is retried; the last one raises RetryableError."""
    h = make(attempts=2, timeout=0.2)
    h.rutter.queue("/connections/status", Reply(hang=True), Reply(hang=True))
    with pytest.raises(RetryableError, match="timed out"):
        await h.client.fetch_status(TOKEN)
    assert h.observed.statuses() == ["timeout", "timeout"]


async def test_a_connection_error_is_retried_and_counted_as_error(make: Any) -> None:
    """A refused connection is retryable and observed with status "error"."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    h = make(attempts=2, base_url=f"http://127.0.0.1:{port}/versioned")
    with pytest.raises(RetryableError):
        await h.client.fetch_status(TOKEN)
    assert h.observed.statuses() == ["error", "error"]
    assert [endpoint for endpoint, _, _ in h.observed.calls] == ["connection_status"] * 2


# ------------------------------------------------------------------------------------------------------------
# Typed errors


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (
            400,
            rutter_error("MISSING_PARAMETER", "access_token is required", "INVALID_REQUEST"),
            RejectedError,
        ),
        (401, rutter_error("INVALID_CREDENTIALS", "Invalid access token"), InvalidCredentialsError),
        (401, b"Unauthorized", InvalidCredentialsError),
        (404, b"<html>Not Found</html>", RejectedError),
        (409, rutter_error("PRODUCT_NOT_READY", "Initial sync in progress"), NotReadyError),
        (400, rutter_error("PRODUCT_NOT_ALLOWED", "Not enabled"), RejectedError),
        (400, rutter_error("CONNECTION_DISABLED", "Connection is disabled"), ConnectionDisabledError),
        (400, rutter_error("NEEDS_UPDATE", "Merchant must reconnect"), NeedsUpdateError),
        (410, rutter_error("RESOURCE_NOT_FOUND", "Gone", "INVALID_REQUEST"), RejectedError),
    ],
)
async def test_rejections_are_typed_and_not_retried(
    make: Any, status: int, body: Any, error: type[RejectedError]
) -> None:
    """Other 4xx answers are not retried and become the typed error their error_code (or 401) names."""
    h = make()
    h.rutter.queue("/connections/status", Reply(status, body))
    with pytest.raises(RejectedError) as info:
        await h.client.fetch_status(TOKEN)
    assert type(info.value) is error
    assert info.value.status == status
    if isinstance(body, dict):
        assert (info.value.error_type, info.value.error_code) == (body["error_type"], body["error_code"])
        assert body["error_message"] in str(info.value)
    else:
        assert (info.value.error_type, info.value.error_code) == (None, None)
    assert len(h.rutter.seen) == 1
    assert not isinstance(info.value, RetryableError)


async def test_product_not_ready_is_a_not_ready_error_not_a_failure(make: Any) -> None:
    """PRODUCT_NOT_READY tells the caller "not ready yet" with its own type."""
    h = make()
    h.rutter.queue("/connections/access_token", Reply(400, rutter_error("PRODUCT_NOT_READY", "Still syncing")))
    with pytest.raises(NotReadyError):
        await h.client.fetch_connection(TOKEN)


async def test_wrong_client_credentials_are_rejected_once(make: Any) -> None:
    """A wrong client secret gets Rutter's 401, raised as InvalidCredentialsError without a retry."""
    h = make(secret="sk_prod_wrong_wrong_wrong")
    with pytest.raises(InvalidCredentialsError):
        await h.client.list_connections()
    assert len(h.rutter.seen) == 1


async def test_a_non_json_5xx_still_has_its_status(make: Any) -> None:
    """A 502 HTML page from a proxy becomes a RetryableError carrying status 502."""
    h = make(attempts=1)
    h.rutter.queue("/connections", Reply(502, b"<html><body>502 Bad Gateway</body></html>"))
    with pytest.raises(RetryableError) as info:
        await h.client.list_connections()
    assert info.value.status == 502
    assert info.value.error_code is None


# ------------------------------------------------------------------------------------------------------------
# Secrets and tokens


def leaks(text: str) -> bool:
    return TOKEN in text or CLIENT_SECRET in text


async def test_tokens_and_secrets_echoed_by_rutter_never_reach_errors_or_logs(make: Any) -> None:
    """An error message quoting the token and the secret is redacted in the exception and in the logs."""
    h = make(attempts=2)
    echo = f"access_token={TOKEN} rejected for client {CLIENT_ID}:{CLIENT_SECRET}"
    h.rutter.queue(
        "/connections/status",
        Reply(503, rutter_error("SERVICE_UNAVAILABLE", echo)),
        Reply(400, rutter_error("INVALID_CREDENTIALS", f'{{"access_token": "{TOKEN}"}} is stale')),
    )
    with capture_logs() as logs, pytest.raises(RutterError) as info:
        await h.client.fetch_status(TOKEN)
    exc = info.value
    rendered = "".join(traceback.format_exception(exc))
    assert not leaks(str(exc))
    assert not leaks(repr(exc))
    assert not leaks(rendered)
    assert "[REDACTED]" in str(exc)
    assert logs, "each failed attempt is logged"
    assert not any(leaks(repr(event)) for event in logs)


async def test_aiohttp_errors_quoting_the_url_are_reraised_without_the_token(clock: AutoClock) -> None:
    """An aiohttp error quoting the request URL (with ?access_token=) is re-raised redacted and causeless."""

    async def fail(session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        raise aiohttp.ClientConnectionError(f"Connection timeout to host {params.url}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(fail)
    observed = Observed()
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = RutterClient(
            session,
            base_url="http://127.0.0.1:9/versioned",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            api_version=VERSION,
            limiter=SlidingWindowLimiter(10, clock=clock),
            observer=observed,
            attempts=2,
            clock=clock,
        )
        with capture_logs() as logs, pytest.raises(RetryableError) as info:
            await client.fetch_connection(TOKEN)
    exc = info.value
    assert "access_token=[REDACTED]" in str(exc)
    assert not leaks(str(exc))
    assert not leaks("".join(traceback.format_exception(exc)))
    assert exc.__cause__ is None
    assert exc.__suppress_context__
    assert not any(leaks(repr(event)) for event in logs)
    assert observed.statuses() == ["error", "error"]


async def test_reprs_show_no_secret_or_token(session: aiohttp.ClientSession, clock: AutoClock) -> None:
    """The client's repr and a listing's repr hold neither the client secret nor the access token."""
    client = RutterClient(
        session,
        base_url="https://production.rutterapi.com/versioned",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        api_version=VERSION,
        limiter=SlidingWindowLimiter(10, clock=clock),
        clock=clock,
    )
    assert "production.rutterapi.com" in repr(client)
    assert not leaks(repr(client))
    assert not leaks(str(client))
    assert not leaks(repr(LIST_EXPECTED[0]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /connections/status?access_token=abc-123&x=1",
            "GET /connections/status?access_token=[REDACTED]&x=1",
        ),
        ('{"access_token": "abc-123", "id": 1}', '{"access_token": "[REDACTED]", "id": 1}'),
        ("ACCESS_TOKEN: abc-123 is stale", "ACCESS_TOKEN: [REDACTED] is stale"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact_hides_access_token_values(text: str, expected: str) -> None:
    """redact() replaces every access_token value, in a query, in JSON or in prose."""
    assert redact(text) == expected


def test_redact_hides_named_secrets_anywhere() -> None:
    """redact() also replaces each given secret wherever it appears."""
    assert redact(f"client {CLIENT_SECRET} token {TOKEN}", [CLIENT_SECRET, TOKEN, ""]) == (
        "client [REDACTED] token [REDACTED]"
    )

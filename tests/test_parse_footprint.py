"""The memory a parsed connection list keeps: values from small sets (platform, listed status) are one object
for every item that carries them, however many items the unpaginated list holds."""

from __future__ import annotations

import json

from monitor.rutter.parse import iter_listing, parse_details, parse_status


class Chunks:
    """An async byte stream served in small chunks, as aiohttp's response.content serves a body."""

    def __init__(self, data: bytes, chunk: int = 1024) -> None:
        self._data = data
        self._chunk = chunk
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        size = self._chunk if n < 0 else min(n, self._chunk)
        out = self._data[self._pos : self._pos + size]
        self._pos += len(out)
        return out


def body(count: int) -> bytes:
    platforms = ("SHOPIFY", "NETSUITE")
    statuses = ("active", "unhealthy", "disabled")
    items = [
        {
            "id": f"conn-{n}",
            "access_token": f"tok-{n}",
            "platform": platforms[n % 2],
            "status": statuses[n % 3],
            "name": f"Store {n}",
            "created_at": "2026-01-01T00:00:00.000Z",
        }
        for n in range(count)
    ]
    return json.dumps({"connections": items}).encode()


async def test_listed_platforms_and_statuses_are_shared_across_items() -> None:
    """3,000 listed connections over 2 platforms and 3 statuses hold 2 platform and 3 status objects."""
    listings = [item async for item in iter_listing(Chunks(body(3_000)))]
    assert len(listings) == 3_000
    assert len({id(item.platform) for item in listings}) == 2
    assert len({id(item.status) for item in listings}) == 3
    assert {item.platform for item in listings} == {"SHOPIFY", "NETSUITE"}
    assert listings[4].status == "unhealthy"
    assert listings[4].platform == "SHOPIFY"


def test_the_status_and_fetch_parsers_share_one_platform_object() -> None:
    """A platform parsed from a status body (spaces stripped) and from a connection body is one object."""
    status = parse_status(
        json.loads('{"connection": {"id": "c1", "platform": " SHOPIFY "}, "status": {"is_ready": true}}')
    )
    details = parse_details(json.loads('{"connection": {"id": "c1", "platform": "SHOPIFY"}}'))
    assert status.platform == details.platform == "SHOPIFY"
    assert status.platform is details.platform

"""Rutter's JSON -> monitor.domain values, at the edge and at once (docs/rutter-api.md §2, §2.1).

Tolerant of what changes between API versions and over time: unknown platforms, extra fields, missing optional
fields, `disabled_reason` null or the string "null", `is_healthy` absent before 2024-08-31. Strict only
about what identifies a connection (its id, and a listed one's access token): without those, the body is
malformed."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import ijson

from monitor.domain import ConnectionDetails, Listing, StatusSnapshot
from monitor.rutter.errors import MalformedResponseError

UNKNOWN_PLATFORM = "UNKNOWN"  # a platform field missing altogether; any string Rutter sends is kept as it is

LISTING_PREFIX = "connections.item"
_HEAD_BYTES = 64 * 1024
_READ_BYTES = 64 * 1024


class AsyncReader(Protocol):
    """What ijson reads from: aiohttp's `response.content` is one."""

    async def read(self, n: int = -1) -> bytes: ...


def parse_listing_item(obj: Mapping[str, Any]) -> Listing:
    """One item of `GET /connections`; items of 2023-03-14 lack `status` and `name`."""
    if not isinstance(obj, Mapping):
        raise MalformedResponseError("connection list item is not an object")
    return Listing(
        id=_required_str(obj, "id", "connection list item"),
        access_token=_required_str(obj, "access_token", "connection list item"),
        platform=_platform(obj.get("platform")),
        status=_label(obj.get("status")),
        name=_str(obj.get("name")),
        link_url=_str(obj.get("link_url")),
        created_at=_datetime(obj.get("created_at")),
        updated_at=_datetime(obj.get("updated_at")),
    )


def parse_status(obj: Mapping[str, Any]) -> StatusSnapshot:
    """The whole `GET /connections/status` body: `{"connection": {id, orgId, platform}, "status": {...}}`."""
    connection = _mapping(obj.get("connection")) if isinstance(obj, Mapping) else None
    status = _mapping(obj.get("status")) if isinstance(obj, Mapping) else None
    if connection is None or status is None:
        raise MalformedResponseError("connection status body lacks the connection or status object")
    needs_update = _mapping(status.get("needs_update_status")) or {}
    disabled = _mapping(status.get("disabled_status")) or {}
    historical = _mapping(status.get("historical_sync_status")) or {}
    is_healthy = status.get("is_healthy")
    return StatusSnapshot(
        connection_id=_required_str(connection, "id", "connection status"),
        platform=_platform(connection.get("platform") or status.get("platform")),
        is_ready=_bool(status.get("is_ready")),
        needs_update=_bool(needs_update.get("needs_update")),
        is_disabled=_bool(disabled.get("is_disabled")),
        historical_sync_completed=_bool(historical.get("historical_sync_completed")),
        is_healthy=is_healthy if isinstance(is_healthy, bool) else None,
        disabled_reason=_reason(disabled.get("disabled_reason")),
        link_url=_str(status.get("link_url")),
        created_at=_datetime(status.get("created_at")),
        last_sync_completed_at=_datetime(status.get("last_sync_completed_at")),
        num_batches_completed=_int(historical.get("num_batches_completed")),
        synced_count=_synced_count(historical),
    )


def parse_details(obj: Mapping[str, Any]) -> ConnectionDetails:
    """The whole `GET /connections/access_token` ("Fetch a Connection") body: `{"connection": {...}}`."""
    connection = _mapping(obj.get("connection")) if isinstance(obj, Mapping) else None
    if connection is None:
        raise MalformedResponseError("connection body lacks the connection object")
    return ConnectionDetails(
        id=_required_str(connection, "id", "connection"),
        platform=_platform(connection.get("platform")),
        store_name=_str(connection.get("store_name")),
        store_domain=_str(connection.get("store_domain")),
        created_at=_datetime(connection.get("created_at")),
        last_sync_completed_at=_datetime(connection.get("last_sync_completed_at")),
        last_sync_started_at=_datetime(connection.get("last_sync_started_at")),
    )


async def iter_listing(stream: AsyncReader) -> AsyncIterator[Listing]:
    """The items of a `{"connections": [...]}` body, parsed one by one as bytes arrive: a 100k-connection list
    (about 35 MB) never sits in memory as a whole, neither as bytes nor as Python objects."""
    recorder = _HeadRecorder(stream)
    count = 0
    try:
        async for item in ijson.items(recorder, LISTING_PREFIX, use_float=True, buf_size=_READ_BYTES):
            count += 1
            yield parse_listing_item(item)
    except ijson.JSONError as exc:
        raise MalformedResponseError(f"connection list is not valid JSON ({type(exc).__name__})") from None
    if count == 0:
        # ijson yields nothing both for `{"connections": []}` and for a body without the array; only the first
        # is an empty fleet (an empty list that is not one would mark every connection deleted).
        recorder.check_empty_listing()


class _HeadRecorder:
    """Passes reads through, keeping the first bytes so that an empty result can be checked afterwards."""

    def __init__(self, stream: AsyncReader) -> None:
        self._stream = stream
        self._head = bytearray()
        self._size = 0

    async def read(self, n: int = -1) -> bytes:
        data = await self._stream.read(n)
        if len(self._head) < _HEAD_BYTES:
            self._head += data[: _HEAD_BYTES - len(self._head)]
        self._size += len(data)
        return data

    def check_empty_listing(self) -> None:
        if self._size > _HEAD_BYTES:
            raise MalformedResponseError("connection list body holds no connections array")
        try:
            obj = json.loads(bytes(self._head))
        except ValueError:
            raise MalformedResponseError("connection list is not valid JSON") from None
        if not isinstance(obj, dict) or obj.get("connections") != []:
            raise MalformedResponseError("connection list body holds no connections array")


# ------------------------------------------------------------------------------------------------------------
# Field helpers: each one turns a JSON value into a typed one or None, never raising.


def _mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _required_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedResponseError(f"{what} has no {key}")
    return value


def _platform(value: object) -> str:
    """Interned: 100,000 connections name about 30 platforms, and each state keeps its platform for its life."""
    return sys.intern(value.strip()) if isinstance(value, str) and value.strip() else UNKNOWN_PLATFORM


def _label(value: object) -> str | None:
    """A value from a small set (a listed status), interned: one object for 100,000 listings, not one each."""
    return sys.intern(value) if isinstance(value, str) and value else None


def _bool(value: object) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return value is True


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _reason(value: object) -> str | None:
    """The standardized disabled reason as Rutter spells it; JSON null and the string "null" mean none."""
    text = _str(value)
    if text is None or text.strip().lower() == "null":
        return None
    return text.strip()


def _datetime(value: object) -> datetime | None:
    """An aware UTC datetime from ISO 8601 (`Z`, offsets, 3 to 9 fractional digits); naive means UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _synced_count(historical: Mapping[str, Any]) -> int | None:
    """Sum of every synced count in the historical sync status: it moves whenever a batch makes progress."""
    counts: list[int] = []
    for key, value in historical.items():
        if key.startswith("synced_") and key.endswith("_count"):
            count = _int(value)
            if count is not None:
                counts.append(count)
    total = _mapping(historical.get("total")) or {}
    for entity in total.values():
        entity_map = _mapping(entity)
        count = _int(entity_map.get("synced_count")) if entity_map is not None else None
        if count is not None:
            counts.append(count)
    return sum(counts) if counts else None

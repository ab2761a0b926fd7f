"""Webhook ingest: size, signature, JSON, dedupe, then durable before the 2xx. Many requests share one transaction
(group commit). Processing happens afterwards, in monitor.processor."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from aiohttp import web

from monitor.clock import Clock
from monitor.domain import LIFECYCLE_CODES, code_label
from monitor.log import webhook_line
from monitor.metrics import UNPARSED_CODE, Metrics
from monitor.rutter import signature
from monitor.store import DedupeRow, InboxItem, Store, StoreError

log = structlog.get_logger()

REDACTED = "[redacted]"


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


class ShuttingDown(Exception):
    """The daemon no longer takes work; the sender should retry later."""


_TOKEN_KEY = b'"access_token"'
_REDACTED_JSON = json.dumps(REDACTED)


def redact(value: Any) -> tuple[Any, str | None]:
    """A copy of a JSON value with every `access_token` replaced, and the first token found."""
    found: str | None = None

    def walk(node: Any) -> Any:
        nonlocal found
        if isinstance(node, dict):
            out = {}
            for key, item in node.items():
                if key == "access_token":
                    if found is None and isinstance(item, str):
                        found = item
                    out[key] = REDACTED
                else:
                    out[key] = walk(item)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(value), found


def stored_body(payload: Any, raw: bytes) -> tuple[str, str | None]:
    """The text to store for a webhook body and its access token: the raw body itself with the token cut out, so
    nothing is serialised again (bench/ingest.py: re-serialising cost more than the parse). When the raw text
    cannot be trusted to hold the token in one plain spelling (a `\\u` escape, a nested `access_token`, a
    non-UTF-8 encoding), the parsed value is redacted in full and serialised instead."""
    if b"\\u" not in raw:
        occurrences = raw.count(_TOKEN_KEY)
        try:
            if occurrences == 0:
                return raw.decode("utf-8"), None
            token = payload.get("access_token") if isinstance(payload, dict) else None
            if occurrences == 1 and isinstance(token, str) and token:
                spelled = json.dumps(token)  # a token needing no escapes: every match is a whole JSON string
                text = raw.decode("utf-8")
                if spelled == f'"{token}"' and spelled in text:
                    return text.replace(spelled, _REDACTED_JSON), token
        except UnicodeDecodeError:
            pass
    redacted, token = redact(payload)
    return json.dumps(redacted, separators=(",", ":")), token


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIME_BITS = 56  # microseconds since 1970 fit until the year 4253


def _entry(inbox_id: int, at: datetime) -> int:
    """An index entry: the inbox id and the time received, packed in one int. The index holds up to hundreds of
    thousands of entries. As slots dataclasses they were ~90% of the oldest generation, and full collections grew with
    them (to 38 ms within a run at 1,000 connections, 54-149 ms at 100,000); an int is not tracked by the collector at
    all, and takes ~40 bytes where a tuple of an int and a datetime took ~150 (bench/README.md, session 5)."""
    return inbox_id << _TIME_BITS | (at - _EPOCH) // _MICROSECOND


def _entry_id(entry: int) -> int:
    return entry >> _TIME_BITS


def _entry_age(entry: int, now: datetime) -> timedelta:
    return now - (_EPOCH + (entry & ((1 << _TIME_BITS) - 1)) * _MICROSECOND)


def _key(body_hash: str) -> bytes | str:
    """The index's key for a body: its SHA-256 as 32 bytes (65 bytes in memory against 113 for the hex digest), or
    the hash as given when it is not a hex SHA-256."""
    if len(body_hash) == 64:
        try:
            return bytes.fromhex(body_hash)
        except ValueError:
            pass
    return body_hash


class DedupeIndex:
    """A body is a duplicate if it was seen within the window and no other lifecycle event for its connection was
    accepted since. Lifecycle bodies are kept for the whole window; entity bodies up to `entity_cap` (a re-accepted
    entity duplicate only refreshes freshness, so the cap trades nothing that matters for bounded memory)."""

    def __init__(self, window: timedelta, entity_cap: int = 200_000) -> None:
        self._window = window
        self._cap = entity_cap
        self._lifecycle: OrderedDict[bytes | str, int] = OrderedDict()  # key -> _entry(inbox id, received at)
        self._entity: OrderedDict[bytes | str, int] = OrderedDict()
        self._last_lifecycle: dict[str, int] = {}

    def seed(self, rows: Iterable[DedupeRow]) -> None:
        """Rebuild from the inbox after a restart (rows in id order)."""
        for row in rows:
            self._record(row.id, row.body_hash, row.connection_id, row.is_lifecycle, row.received_at)

    def is_duplicate(self, item: InboxItem, now: datetime) -> bool:
        table = self._lifecycle if item.is_lifecycle else self._entity
        seen = table.get(_key(item.body_hash))
        if seen is None or _entry_age(seen, now) > self._window:
            return False
        if item.connection_id is None:
            return True
        return self._last_lifecycle.get(item.connection_id, 0) <= _entry_id(seen)

    def record(self, inbox_id: int, item: InboxItem) -> None:
        self._record(inbox_id, item.body_hash, item.connection_id, item.is_lifecycle, item.received_at)

    def _record(self, inbox_id: int, body_hash: str, connection_id: str | None, lifecycle: bool, at: datetime) -> None:
        table = self._lifecycle if lifecycle else self._entity
        key = _key(body_hash)
        table.pop(key, None)
        table[key] = _entry(inbox_id, at)
        if lifecycle and connection_id is not None:
            self._last_lifecycle[connection_id] = inbox_id
        if not lifecycle and len(table) > self._cap:
            table.popitem(last=False)

    def prune(self, now: datetime) -> None:
        """Forget bodies older than the window."""
        for table in (self._lifecycle, self._entity):
            while table:
                key, seen = next(iter(table.items()))
                if _entry_age(seen, now) <= self._window:
                    break
                del table[key]


_Pending = tuple[InboxItem, "asyncio.Future[Verdict]"]
_Key = tuple[str, str | None]  # (body hash, connection id)
_Flying = tuple[int, InboxItem, "asyncio.Future[Verdict]"]  # (order of acceptance, item, its answer)


class InboxWriter:
    """Group commit: each request waits on a future while one task writes everything queued meanwhile in a single
    transaction, so N concurrent webhooks cost far fewer than N fsyncs. Up to `max_in_flight` transactions overlap
    (the store runs them in order): a webhook that arrives during a commit goes out in the next one at once, rather
    than waiting for the commit in flight to come back (bench/ingest.py). Deduplication sees the bodies in flight
    as if they were already stored."""

    def __init__(
        self,
        store: Store,
        dedupe: DedupeIndex,
        metrics: Metrics,
        *,
        on_commit: Callable[[], None],
        max_batch: int = 1000,
        max_in_flight: int = 3,
    ) -> None:
        self._store = store
        self._dedupe = dedupe
        self._metrics = metrics
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._closing = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._seq = 0  # the order of acceptance among the bodies in flight (their inbox ids are not known yet)
        self._flying_bodies: dict[_Key, int] = {}
        self._flying_lifecycle: dict[str, int] = {}  # connection id -> its last lifecycle body in flight

    async def submit(self, item: InboxItem) -> Verdict:
        """Durably store `item` unless it is a duplicate; raises StoreError or ShuttingDown."""
        if self._closing:
            raise ShuttingDown
        fut: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    def close(self) -> None:
        """Refuse new items; `run` returns once the queue is drained and every commit in flight has ended."""
        self._closing = True
        self._queue.put_nowait(_STOP)

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            while len(self._in_flight) >= self._max_in_flight:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = any(p is _STOP for p in batch)
            fresh = self._admit([p for p in batch if p is not _STOP])
            if fresh:
                task = asyncio.create_task(self._write(fresh), name="inbox-commit")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if stop and self._queue.empty():
                if self._in_flight:
                    await asyncio.wait(self._in_flight)
                return

    def _admit(self, batch: Sequence[_Pending]) -> list[_Flying]:
        """Answer the duplicates at once; number the rest and mark them in flight."""
        fresh: list[_Flying] = []
        for item, fut in batch:
            key = (item.body_hash, item.connection_id)
            cid = item.connection_id
            prior = self._flying_bodies.get(key)
            if prior is not None:  # the same body is in flight: a duplicate unless a lifecycle event came since
                duplicate = cid is None or self._flying_lifecycle.get(cid, -1) <= prior
            elif cid is not None and cid in self._flying_lifecycle:
                duplicate = False  # a lifecycle event in flight is newer than anything the index holds
            else:
                duplicate = self._dedupe.is_duplicate(item, item.received_at)
            if duplicate:
                if not fut.done():
                    fut.set_result(Verdict.DUPLICATE)
                continue
            self._seq += 1
            self._flying_bodies[key] = self._seq
            if item.is_lifecycle and cid is not None:
                self._flying_lifecycle[cid] = self._seq
            fresh.append((self._seq, item, fut))
        return fresh

    def _land(self, fresh: Sequence[_Flying]) -> None:
        """The bodies are no longer in flight (stored, or refused)."""
        for seq, item, _ in fresh:
            key = (item.body_hash, item.connection_id)
            if self._flying_bodies.get(key) == seq:
                del self._flying_bodies[key]
            cid = item.connection_id
            if cid is not None and self._flying_lifecycle.get(cid) == seq:
                del self._flying_lifecycle[cid]

    async def _write(self, fresh: Sequence[_Flying]) -> None:
        try:
            ids = await self._store.insert_inbox([item for _, item, _ in fresh])
        except Exception as exc:
            if not isinstance(exc, StoreError):
                log.exception("inbox commit failed")
            error = exc if isinstance(exc, StoreError) else StoreError(f"inbox commit failed: {type(exc).__name__}")
            self._land(fresh)
            for _, _, fut in fresh:
                if not fut.done():
                    fut.set_exception(error)
            return
        self._land(fresh)
        self._metrics.inbox_commits.inc()
        for inbox_id, (_, item, fut) in zip(ids, fresh, strict=True):
            self._dedupe.record(inbox_id, item)
            if not fut.done():
                fut.set_result(Verdict.ACCEPTED)
        self._on_commit()


_STOP: Any = object()
_ANSWERS = {verdict: json.dumps({"status": verdict.value}).encode() for verdict in Verdict}


class WebhookEndpoint:
    """POST /webhooks/rutter: 413, then 401, then 400, then durable (200) or 503."""

    def __init__(
        self, writer: InboxWriter, metrics: Metrics, clock: Clock, *, secrets: Sequence[str], max_bytes: int
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._clock = clock
        self._secrets = list(secrets)
        self._max_bytes = max_bytes
        self._counters: dict[tuple[str, Verdict], Any] = {}  # the webhooks counter's children, looked up once each

    def _counter(self, code: str, verdict: Verdict) -> Any:
        child = self._counters.get((code, verdict))
        if child is None:
            child = self._counters[(code, verdict)] = self._metrics.webhooks.labels(code, verdict.value)
        return child

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._handle(request)
        finally:
            self._metrics.webhook_ack.observe(time.perf_counter() - started)

    def _reject(self, status: int, outcome: str, message: str, code: str = UNPARSED_CODE) -> web.Response:
        self._metrics.webhooks.labels(code, outcome).inc()
        return web.json_response({"error": message}, status=status)

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None past `max_bytes`. A declared length is read in one call, cheaper per webhook than the
        chunk iterator (bench/README.md, session 6); a chunked body is counted as it streams."""
        length = request.content_length
        if length is not None:
            if length > self._max_bytes:
                return None
            return await request.content.readexactly(length) if length else b""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await self._read(request)
        except (asyncio.IncompleteReadError, ConnectionResetError):  # the sender went away mid-body
            return self._reject(400, "malformed", "body ended before its Content-Length")
        if body is None:
            return self._reject(413, "too_large", f"body larger than {self._max_bytes} bytes")
        if not signature.verify(body, request.headers.get(signature.HEADER), self._secrets):
            return self._reject(401, "invalid_signature", "missing or invalid X-Rutter-Signature")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._reject(400, "malformed", "body is not valid JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("code"), str) or not payload["code"]:
            return self._reject(400, "malformed", "body has no string `code`")
        code: str = payload["code"]
        connection_id = payload.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            connection_id = None
        text, token = stored_body(payload, body)
        item = InboxItem(
            received_at=self._clock.now(),
            code=code,
            connection_id=connection_id,
            body_hash=hashlib.sha256(body).hexdigest(),
            body=text,
            access_token=token,
            is_lifecycle=code in LIFECYCLE_CODES,
        )
        try:
            verdict = await self._writer.submit(item)
        except (StoreError, ShuttingDown) as exc:
            log.warning("webhook refused", code=code, connection_id=connection_id, error=type(exc).__name__)
            return self._reject(503, "unavailable", "temporarily unable to store the event", code_label(code))
        self._counter(code_label(code), verdict).inc()
        if verdict is Verdict.ACCEPTED:
            self._metrics.last_webhook.set(item.received_at.timestamp())
            webhook_line("webhook accepted", code, connection_id)
        else:
            webhook_line("webhook duplicate", code, connection_id)
        return web.Response(body=_ANSWERS[verdict], content_type="application/json")

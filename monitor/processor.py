"""Inbox -> lifecycle: takes acknowledged webhooks in two lanes (lifecycle codes first, then the rest, each in arrival
order: see SqlStore.unprocessed_inbox), fetches the status where a webhook needs it (Rutter's
connection webhooks carry no reason, no readiness detail), and commits the result with the inbox rows marked
processed in the same transaction, so an acknowledged event is processed exactly once, even across kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from monitor.clock import Clock
from monitor.domain import ConnectionDetails, StatusSnapshot, WebhookReceived
from monitor.recorder import Recorder
from monitor.rutter.errors import RutterError
from monitor.store import InboxRecord, StoreError

log = structlog.get_logger()

# Codes whose meaning depends on the status: readiness and batch completion, the disabled reason, what a reconnect
# restored.
UNKNOWN_PLATFORMS = frozenset({"unknown", "UNKNOWN"})
# Codes whose stage effect depends on the status: worth waiting for a slow answer.
STAGE_CODES = frozenset({"INITIAL_UPDATE", "HISTORICAL_UPDATE"})
Fetched = tuple[StatusSnapshot | None, ConnectionDetails | None]
NEEDS_STATUS = frozenset({"INITIAL_UPDATE", "HISTORICAL_UPDATE", "CONNECTION_DISABLED", "CONNECTION_UPDATED"})


class StatusSource(Protocol):
    async def fetch_status(self, access_token: str) -> StatusSnapshot: ...

    async def fetch_connection(self, access_token: str) -> ConnectionDetails: ...


class Processor:
    """Drains the inbox. Woken by the ingest's commits; also polls the store so nothing waits forever."""

    def __init__(
        self,
        recorder: Recorder,
        clock: Clock,
        rutter: StatusSource | None,
        *,
        batch_size: int = 500,
        max_batch: int | None = None,
        catch_up_after: float = 1.0,
        fast_wait: float = 0.5,
        fetch_timeout: float = 10.0,
        fetch_concurrency: int = 8,
        fetch_delay: Callable[[int], float] | None = None,
    ) -> None:
        """`fetch_delay(ahead)`: seconds before a fetch asked now, behind `ahead` more, would be sent (the rate
        limiter's `delay`); None: at once."""
        self._recorder = recorder
        self._clock = clock
        self._rutter = rutter
        self._batch_size = batch_size
        self._max_batch = max(batch_size, max_batch or batch_size)
        self._catch_up_after = catch_up_after
        self._fast_wait = fast_wait
        self._fetch_timeout = fetch_timeout
        self._fetch_slots = asyncio.Semaphore(fetch_concurrency)
        self._fetch_delay = fetch_delay
        self._wake = asyncio.Event()
        self._draining = asyncio.Lock()  # one drain at a time: the loop, a test or shutdown
        self.processed = 0
        self.set_aside = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self, idle: float = 1.0) -> None:
        """Process forever; cancelled at shutdown after `drain`."""
        while True:
            try:
                await self.drain()
            except StoreError as exc:
                log.warning("inbox processing failed", error=str(exc))
            except Exception:  # a bug must not stop the inbox for good: log it and try again later
                log.exception("inbox processing failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=idle)
            self._wake.clear()

    async def drain(self) -> int:
        """Process every pending inbox row; return how many.

        While the processor keeps up, batches are `batch_size` rows: short transactions, which the webhook commits
        queue behind in the store. Once it falls behind (a full read whose oldest row waited `catch_up_after`
        seconds) they double, up to `max_batch`, until a read comes back short: the backlog is worked off with a
        fraction of the per-batch cost (a read, a transaction), at some cost to the acks meanwhile."""
        total = 0
        size = self._batch_size
        async with self._draining:
            while True:
                rows = await self._recorder.store.unprocessed_inbox(size)
                if not rows:
                    return total
                try:
                    await self.process(rows)
                except StoreError:
                    raise
                except Exception:
                    log.exception("inbox batch failed, retrying row by row", rows=len(rows))
                    await self._one_by_one(rows)
                total += len(rows)
                size = min(2 * size, self._max_batch) if self._behind(rows, size) else self._batch_size

    def _behind(self, rows: Sequence[InboxRecord], size: int) -> bool:
        if len(rows) < size:
            return False
        oldest = min(row.item.received_at for row in rows)
        return (self._clock.now() - oldest).total_seconds() >= self._catch_up_after

    async def _one_by_one(self, rows: Sequence[InboxRecord]) -> None:
        """Isolate a poison event: one that fails alone is set aside (marked processed, logged with its id), so it
        cannot stall the inbox forever; the others are processed normally."""
        for row in rows:
            try:
                await self.process([row])
            except StoreError:
                raise
            except Exception:
                log.exception(
                    "inbox event set aside", inbox_id=row.id, code=row.item.code, connection_id=row.item.connection_id
                )
                async with self._recorder.lock:
                    await self._recorder.store.save([], [], [row.id])
                self.set_aside += 1

    async def process(self, rows: Sequence[InboxRecord]) -> None:
        """Decide and commit one batch of inbox rows.

        Statuses are fetched for the webhooks that need one. After `fast_wait`, every connection that can go is
        committed: an alert (a disable) must not wait on a slow Rutter; its reason follows from a later refresh.
        Connections whose stage depends on a status still on its way (INITIAL_UPDATE, HISTORICAL_UPDATE, a first
        sight) wait for it up to `fetch_timeout`, then commit in a second transaction, so a slow answer does not
        turn a straight initial_sync -> ongoing into two transitions."""
        parsed: list[tuple[InboxRecord, dict[str, object]]] = []
        for row in rows:
            body: object = {}
            if row.item.is_lifecycle:  # only connection codes carry fields the lifecycle reads (update_url, reason)
                with contextlib.suppress(ValueError):
                    body = json.loads(row.item.body)
            parsed.append((row, body if isinstance(body, dict) else {}))
        fetches = self._start_fetches(parsed)
        try:
            if fetches:
                await asyncio.wait(fetches.values(), timeout=self._fast_wait)
            staged = {row.item.connection_id for row, _ in parsed if row.item.code in STAGE_CODES}
            waiting = {
                cid
                for cid, task in fetches.items()
                if not task.done() and (cid in staged or self._recorder.fleet.get(cid) is None)
            }
            now_rows = [(row, body) for row, body in parsed if row.item.connection_id not in waiting]
            later_rows = [(row, body) for row, body in parsed if row.item.connection_id in waiting]
            await self._commit(now_rows, fetches)
            if later_rows:
                await asyncio.wait([fetches[cid] for cid in waiting])
                await self._commit(later_rows, fetches)
        finally:
            for task in fetches.values():
                task.cancel()  # a fetch whose answer came too late for this batch; the poller refreshes it
            await asyncio.gather(*fetches.values(), return_exceptions=True)
        self.processed += len(rows)

    async def _commit(
        self,
        parsed: Sequence[tuple[InboxRecord, dict[str, object]]],
        fetches: dict[str, asyncio.Task[Fetched]],
    ) -> None:
        async with self._recorder.lock:
            unit = self._recorder.unit()
            now = self._clock.now()
            for row, body in parsed:
                unit.inbox_ids.append(row.id)
                connection_id = row.item.connection_id
                if connection_id is None:
                    continue
                task = fetches.get(connection_id)
                status, details = task.result() if task is not None and task.done() else (None, None)
                update_url = body.get("update_url")
                reason = body.get("disabled_reason") or body.get("reason")
                event = WebhookReceived(
                    code=row.item.code,
                    update_url=update_url if isinstance(update_url, str) else None,
                    disabled_reason=reason if isinstance(reason, str) else None,
                    status=status,
                    details=details,
                )
                unit.apply(connection_id, event, now, access_token=row.item.access_token)
            await self._recorder.commit(unit)

    def _start_fetches(
        self, parsed: Sequence[tuple[InboxRecord, dict[str, object]]]
    ) -> dict[str, asyncio.Task[Fetched]]:
        """One status fetch per connection that needs one, with the details of a connection never seen or just
        disabled without a known store name.

        A known connection's fetch that the rate budget could not send within `fast_wait` is not started: the
        batch would wait `fast_wait` for nothing and the next batch (a disable perhaps) behind it. Its webhook is
        applied without a status, as after a timeout, and the poller refreshes the connection first. Under a flood
        of lifecycle webhooks this keeps the inbox moving at the store's pace, not at the budget's. A connection
        never seen still waits for its fetch: its platform and stage come from it."""
        wanted: dict[str, tuple[str, bool]] = {}
        first_sight: set[str] = set()
        for row, _ in parsed:
            cid = row.item.connection_id
            if cid is None:
                continue
            known = self._recorder.fleet.get(cid)
            token = row.item.access_token or (known.access_token if known else None)
            if token is None:
                continue
            if known is None or known.platform in UNKNOWN_PLATFORMS:
                wanted[cid] = (token, True)
                first_sight.add(cid)
            elif row.item.code in NEEDS_STATUS:
                # a disable's alert names the store and may be routed by its name: fetch it once
                details = row.item.code == "CONNECTION_DISABLED" and known.store_name is None
                previous = wanted.get(cid)
                wanted[cid] = (previous[0] if previous else token, details or (previous is not None and previous[1]))
        if self._rutter is None:
            return {}
        fetches: dict[str, asyncio.Task[Fetched]] = {}
        ahead = 0  # requests this batch has already queued
        for cid in sorted(wanted, key=lambda c: c not in first_sight):  # those that must wait go first
            token, details = wanted[cid]
            if cid not in first_sight and self._fetch_delay is not None and self._fetch_delay(ahead) > self._fast_wait:
                self._recorder.urgent.add(cid)
                self._recorder.metrics.fetches_deferred.inc()
                continue
            fetches[cid] = asyncio.create_task(self._fetch(cid, token, details), name=f"status-fetch-{cid}")
            ahead += 1 + details
        return fetches

    async def _fetch(
        self, connection_id: str, token: str, with_details: bool
    ) -> tuple[StatusSnapshot | None, ConnectionDetails | None]:
        assert self._rutter is not None
        async with self._fetch_slots:
            status: StatusSnapshot | None = None
            details: ConnectionDetails | None = None
            try:
                status = await asyncio.wait_for(self._rutter.fetch_status(token), self._fetch_timeout)
                if with_details:
                    details = await asyncio.wait_for(self._rutter.fetch_connection(token), self._fetch_timeout)
            except (RutterError, TimeoutError) as exc:
                log.warning(
                    "status fetch failed",
                    connection_id=connection_id,
                    error=type(exc).__name__,
                    detail=str(exc),
                )
                self._recorder.urgent.add(connection_id)
            return status, details

"""Delivery of the simulator's webhooks the way Rutter delivers them: signed with the client secret, POSTed as
JSON, retried up to 6 times with exponential backoff over about 15 minutes on a non-2xx answer or a connection
error, then given up. Faults real delivery shows are injected on purpose: some webhooks are dropped, some sent
twice, some held back and sent after a later one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
import structlog

from monitor.clock import Clock
from monitor.rutter.signature import HEADER, sign
from monitor.simulator.config import SimulatorConfig
from monitor.simulator.model import OutgoingWebhook

log = structlog.get_logger()

# Seconds before each retry: 6 retries, 945 s in all (Rutter: "6 times, exponential backoff, ~15 minutes").
RETRY_DELAYS: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0, 240.0, 480.0)
MAX_HOLD_SECONDS = 60.0  # a reordered webhook waits at most this long (realistic seconds) for a later one


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST of one webhook; `status` is None when the receiver could not be reached."""

    code: str
    connection_id: str
    attempt: int  # 1 for the first try
    status: int | None
    at: datetime


@dataclass(slots=True)
class DeliveryStats:
    """Counters of what happened to webhooks, for tests and `GET /_sim/stats`."""

    queued: int = 0  # webhooks the fleet produced
    dropped: int = 0  # never sent (drop fault)
    duplicated: int = 0  # sent twice (duplicate fault)
    reordered: int = 0  # held back and sent after a later one
    discarded: int = 0  # no webhook URL configured
    attempts: int = 0
    delivered: int = 0  # answered 2xx
    failed_attempts: int = 0
    given_up: int = 0  # every retry failed


@dataclass(slots=True, order=True)
class _Delivery:
    due_at: datetime
    seq: int
    code: str = field(compare=False)
    connection_id: str = field(compare=False)
    body: bytes = field(compare=False, repr=False)
    attempt: int = field(default=0, compare=False)


class WebhookSender:
    """The queue of webhooks to deliver, the faults applied to them and the retries after failures."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Clock,
        session: aiohttp.ClientSession,
        rng: random.Random,
    ) -> None:
        self.url = config.webhook_url
        self._config = config
        self._clock = clock
        self._session = session
        self._rng = rng
        self._queue: list[_Delivery] = []
        self._held: list[tuple[datetime, _Delivery]] = []
        self._seq = itertools.count()
        self._lock = asyncio.Lock()
        self.stats = DeliveryStats()
        self.history: deque[DeliveryAttempt] = deque(maxlen=10_000)

    @property
    def pending(self) -> int:
        """Webhooks waiting for delivery or a retry (held ones included)."""
        return len(self._queue) + len(self._held)

    def enqueue(self, webhooks: Iterable[OutgoingWebhook]) -> None:
        """Queue webhooks for delivery now, applying the configured faults."""
        now = self._clock.now()
        config = self._config
        for webhook in webhooks:
            self.stats.queued += 1
            if self.url is None:
                self.stats.discarded += 1
                continue
            body = json.dumps(webhook.payload, separators=(",", ":")).encode()
            roll = self._rng.random()
            if roll < config.drop_rate:
                self.stats.dropped += 1
                log.debug("sim webhook dropped", code=webhook.code, connection_id=webhook.connection_id)
                continue
            if roll < config.drop_rate + config.duplicate_rate:
                self.stats.duplicated += 1
                self._push(webhook, body, now)
                self._push(webhook, body, now)
            elif roll < config.drop_rate + config.duplicate_rate + config.reorder_rate:
                self.stats.reordered += 1
                self._held.append((now, self._make(webhook, body, now)))
                continue
            else:
                self._push(webhook, body, now)
            self._release_held(now, everything=True)

    def release_held(self, *, everything: bool = False) -> None:
        """Send held-back webhooks that waited long enough (or all of them)."""
        self._release_held(self._clock.now(), everything=everything)

    async def deliver_due(self) -> int:
        """POST every webhook due now, one after the other; the number of attempts made."""
        async with self._lock:
            now = self._clock.now()
            made = 0
            while self._queue and self._queue[0].due_at <= now:
                delivery = heapq.heappop(self._queue)
                await self._attempt(delivery)
                made += 1
            return made

    def _release_held(self, now: datetime, *, everything: bool) -> None:
        limit = timedelta(seconds=MAX_HOLD_SECONDS * self._config.time_scale)
        keep: list[tuple[datetime, _Delivery]] = []
        for held_at, delivery in self._held:
            if everything or now - held_at >= limit:
                delivery.seq = next(self._seq)
                delivery.due_at = now
                heapq.heappush(self._queue, delivery)
            else:
                keep.append((held_at, delivery))
        self._held = keep

    def _make(self, webhook: OutgoingWebhook, body: bytes, now: datetime) -> _Delivery:
        return _Delivery(now, next(self._seq), webhook.code, webhook.connection_id, body)

    def _push(self, webhook: OutgoingWebhook, body: bytes, now: datetime) -> None:
        heapq.heappush(self._queue, self._make(webhook, body, now))

    async def _attempt(self, delivery: _Delivery) -> None:
        url = self.url
        if url is None:
            self.stats.discarded += 1
            return
        delivery.attempt += 1
        self.stats.attempts += 1
        headers = {
            "Content-Type": "application/json",
            HEADER: sign(delivery.body, self._config.client_secret),
        }
        status: int | None = None
        try:
            async with self._session.post(
                url,
                data=delivery.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._config.webhook_timeout),
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info(
                "sim webhook unreachable",
                code=delivery.code,
                connection_id=delivery.connection_id,
                attempt=delivery.attempt,
                error=type(exc).__name__,
            )
        now = self._clock.now()
        self.history.append(DeliveryAttempt(delivery.code, delivery.connection_id, delivery.attempt, status, now))
        if status is not None and 200 <= status < 300:
            self.stats.delivered += 1
            return
        self.stats.failed_attempts += 1
        if delivery.attempt > len(RETRY_DELAYS):
            self.stats.given_up += 1
            log.info("sim webhook given up", code=delivery.code, connection_id=delivery.connection_id)
            return
        delay = RETRY_DELAYS[delivery.attempt - 1] * self._config.time_scale
        delivery.due_at = now + timedelta(seconds=delay)
        delivery.seq = next(self._seq)
        heapq.heappush(self._queue, delivery)
        log.debug(
            "sim webhook retry planned",
            code=delivery.code,
            connection_id=delivery.connection_id,
            status=status,
            attempt=delivery.attempt,
            delay_seconds=delay,
        )

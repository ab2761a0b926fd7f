"""Delivery of the durable outbox: each channel (route) strictly in order, at most one message per `pace` seconds,
`Retry-After` honoured, 5xx and connection errors retried with exponential backoff, permanent refusals marked
failed. Every attempt is counted in the store before it is made; in bot mode a message whose earlier attempt may
have reached Slack is looked up by its message metadata and recorded instead of being sent again.

`deliver_due()` is one step (tests call it); `run()` is the daemon's loop around it. The loop waits in wall time and
reads the injected clock, so a FakeClock in tests never sees it as a sleeper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TextIO

import aiohttp
import structlog

from monitor.alerting import DeliveryError
from monitor.alerting.model import Action, Attempt, OutboxRow, OutboxState, Thread
from monitor.alerting.routing import Mode, Router
from monitor.alerting.slack import ConsoleSink, Delivered, MessageSink, SlackBotSink, SlackWebhookSink
from monitor.clock import Clock
from monitor.config import Settings
from monitor.metrics import Metrics
from monitor.store import Store, StoreError

log = structlog.get_logger()

EVENT_TYPE = "rutter_monitor_notification"
FIND_MARGIN = timedelta(minutes=5)  # clock skew between us and Slack when searching for an earlier attempt
# Earlier outcomes after which the message may be in Slack: no answer recorded (the process died), or no answer
# received (timeout, connection lost). An HTTP error answer means Slack did not take it.
_UNKNOWN_OUTCOMES = frozenset({"", "connection"})


class Channel(Protocol):
    """One route's way of delivering outbox rows."""

    async def send(self, row: OutboxRow, thread: Thread | None) -> Delivered: ...

    async def find(self, row: OutboxRow, thread: Thread | None, since: datetime) -> Delivered | None:
        """The message an earlier attempt of `row` left in Slack, when that can be known."""
        ...


def message_key(row: OutboxRow) -> str:
    """The metadata key that identifies one outbox row's message in the channel."""
    return f"{row.message.group}/{row.id}"


class PlainChannel:
    """An incoming webhook or the console: posts only, and cannot look back (a crash may duplicate one)."""

    def __init__(self, sink: MessageSink) -> None:
        self._sink = sink

    async def send(self, row: OutboxRow, thread: Thread | None) -> Delivered:
        return await self._sink.post(row.message.payload)

    async def find(self, row: OutboxRow, thread: Thread | None, since: datetime) -> Delivered | None:
        return None


class BotChannel:
    """A bot token and a channel: parents carry metadata, replies go in the thread, updates edit the parent."""

    def __init__(self, sink: SlackBotSink) -> None:
        self._sink = sink

    async def send(self, row: OutboxRow, thread: Thread | None) -> Delivered:
        m = row.message
        if m.action is Action.UPDATE:
            if thread is None:
                raise ValueError("an edit needs its parent")
            return await self._sink.update(thread.slack_channel, thread.ts, m.payload)
        thread_ts = thread.ts if m.action is Action.REPLY and thread is not None else None
        metadata: dict[str, Any] = {"event_type": EVENT_TYPE, "event_payload": {"key": message_key(row)}}
        return await self._sink.post(m.payload, thread_ts=thread_ts, metadata=metadata)

    async def find(self, row: OutboxRow, thread: Thread | None, since: datetime) -> Delivered | None:
        if row.message.action is Action.UPDATE:
            return None  # editing the parent again is harmless
        thread_ts = thread.ts if row.message.action is Action.REPLY and thread is not None else None
        ts = await self._sink.find_by_metadata(EVENT_TYPE, message_key(row), since, thread_ts=thread_ts)
        return None if ts is None else Delivered(ts=ts, channel=self._sink.channel_id)


def build_channels(
    settings: Settings, router: Router, session: aiohttp.ClientSession | None, console: TextIO | None
) -> dict[str, Channel]:
    """A channel per routing target, with the secrets from the settings (they go no further than the sinks)."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
    channels: dict[str, Channel] = {}

    def bot(channel: str) -> Channel:
        return BotChannel(SlackBotSink(token, channel, base_url=settings.slack_api_url, session=session))

    for route in settings.routes:
        if route.label in channels:
            continue
        if route.slack_channel:
            channels[route.label] = bot(route.slack_channel)
        elif route.slack_webhook_url is not None:
            sink = SlackWebhookSink(route.slack_webhook_url.get_secret_value(), session=session)
            channels[route.label] = PlainChannel(sink)
    default = router.default
    if default is not None and default.label not in channels:
        if default.mode is Mode.BOT and settings.slack_channel:
            channels[default.label] = bot(settings.slack_channel)
        elif default.mode is Mode.WEBHOOK and settings.slack_webhook_url is not None:
            sink = SlackWebhookSink(settings.slack_webhook_url.get_secret_value(), session=session)
            channels[default.label] = PlainChannel(sink)
        elif default.mode is Mode.CONSOLE and console is not None:
            channels[default.label] = PlainChannel(ConsoleSink(console))
    return channels


class Delivery:
    """Sends the outbox. `lock` is the engine's: a claim never interleaves with a decision that could withdraw
    the row; `on_claim` tells the engine a firing message left."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        channels: Mapping[str, Channel],
        *,
        lock: asyncio.Lock | None = None,
        on_claim: Callable[[OutboxRow], None] | None = None,
        pace: float = 1.0,
        max_backoff: float = 300.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._channels = dict(channels)
        self._lock = lock or asyncio.Lock()
        self._on_claim = on_claim
        self._pace = timedelta(seconds=pace)
        self._max_backoff = max_backoff
        self._ready: dict[str, datetime] = {}  # channel -> not before (pacing, Retry-After, backoff)
        self._next_due: datetime | None = clock.now()  # check at start: rows may be left from before a restart
        self._wake = asyncio.Event()
        self._step = asyncio.Lock()  # one step at a time: the loop and a caller never attempt a row twice
        self._stopping = False
        for label in self._channels:
            metrics.ensure_channel(label)

    @property
    def channels(self) -> list[str]:
        return sorted(self._channels)

    def wake(self) -> None:
        """New rows were enqueued: look at once."""
        now = self._clock.now()
        self._next_due = now if self._next_due is None else min(self._next_due, now)
        self._wake.set()

    def due(self) -> bool:
        return self._next_due is not None and self._clock.now() >= self._next_due

    async def deliver_due(self) -> int:
        """Attempt the head of every channel that is due; return how many attempts were made."""
        async with self._step:
            return await self._deliver_heads()

    async def _deliver_heads(self) -> int:
        now = self._clock.now()
        heads = await self._store.outbox_heads()
        due = [h for h in heads if max(h.next_attempt_at, self._ready.get(h.message.channel, now)) <= now]
        if due:
            results = await asyncio.gather(*(self._deliver(row) for row in due), return_exceptions=True)
            for row, result in zip(due, results, strict=True):
                if isinstance(result, StoreError):
                    raise result
                if isinstance(result, BaseException):
                    log.error("notification attempt crashed", channel=row.message.channel, exc_info=result)
            self._next_due = now  # the next heads are known only after another look
            return len(due)
        wake_at = [max(h.next_attempt_at, self._ready.get(h.message.channel, now)) for h in heads]
        self._next_due = min(wake_at, default=None)
        return 0

    async def run(self, poll: float = 0.25) -> None:
        """Deliver until stopped; a store outage or a crashing attempt never ends the loop."""
        while not self._stopping:
            if self.due():
                try:
                    await self.deliver_due()
                except StoreError as exc:
                    log.warning("outbox delivery failed", error="StoreError", detail=str(exc))
                    self._next_due = self._clock.now() + self._pace
                except Exception:  # a bug must not end delivery for good: log it, try again later
                    log.exception("outbox delivery crashed")
                    self._next_due = self._clock.now() + self._pace
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)
            self._wake.clear()

    def stop(self) -> None:
        """Finish the attempt in flight, then leave the rest for the next start."""
        self._stopping = True
        self._wake.set()

    async def _deliver(self, row: OutboxRow) -> None:
        m = row.message
        now = self._clock.now()
        self._ready[m.channel] = max(self._ready.get(m.channel, now), now + self._pace)
        channel = self._channels.get(m.channel)
        if channel is None:
            await self._settle(row, Attempt(OutboxState.FAILED, now, error="no_route"), "failed")
            return
        async with self._lock:
            claimed = await self._store.outbox_claim(row.id, now)
            if claimed is None:
                return
            if self._on_claim is not None:
                self._on_claim(claimed)
        thread = None if m.action is Action.POST else await self._store.outbox_thread(m.group)
        try:
            delivered = None
            if claimed.attempts > 0 and claimed.last_error in _UNKNOWN_OUTCOMES:
                since = (claimed.first_attempt_at or now) - FIND_MARGIN
                delivered = await channel.find(claimed, thread, since)
                if delivered is not None:
                    log.info("notification found already delivered", channel=m.channel, kind=m.kind.value)
            if delivered is None:
                if m.action is Action.UPDATE and thread is None:
                    await self._settle(claimed, Attempt(OutboxState.CANCELLED, now, error="no_parent"), None)
                    return
                delivered = await channel.send(claimed, thread)
        except DeliveryError as exc:
            await self._failed(claimed, exc, now)
            return
        at = self._clock.now()
        sent = Attempt(OutboxState.SENT, at, ts=delivered.ts, slack_channel=delivered.channel)
        await self._settle(claimed, sent, "sent")
        self._metrics.notification_delay.observe(max(0.0, (at - m.detected_at).total_seconds()))
        log.info("notification sent", channel=m.channel, kind=m.kind.value, action=m.action.value)

    async def _failed(self, row: OutboxRow, exc: DeliveryError, now: datetime) -> None:
        m = row.message
        if exc.permanent:
            await self._settle(row, Attempt(OutboxState.FAILED, now, error=exc.code), "failed")
            log.warning("notification failed", channel=m.channel, kind=m.kind.value, error=exc.code)
            return
        attempts = row.attempts + 1
        rate_limited = exc.code == "rate_limited"
        if exc.retry_after is not None:
            delay = exc.retry_after
        elif rate_limited:
            delay = self._pace.total_seconds()
        else:
            delay = min(self._max_backoff, float(2 ** min(attempts - 1, 30)))
        retry_at = now + timedelta(seconds=delay)
        self._ready[m.channel] = max(self._ready.get(m.channel, retry_at), retry_at)
        outcome = "rate_limited" if rate_limited else "retried"
        await self._settle(row, Attempt(OutboxState.PENDING, now, next_attempt_at=retry_at, error=exc.code), outcome)
        log.info("notification retry", channel=m.channel, error=exc.code, attempts=attempts, delay=delay)

    async def _settle(self, row: OutboxRow, attempt: Attempt, outcome: str | None) -> None:
        await self._store.outbox_record(row.id, attempt)
        if outcome is not None:
            self._metrics.notifications.labels(row.message.channel, outcome).inc()

"""Pushes incidents to Alertmanager's `POST /api/v2/alerts`, so teams can reuse their routing, silences and
inhibition. The engine re-posts firing alerts every resend interval and posts `endsAt` to end one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import structlog

from monitor.alerting import DeliveryError
from monitor.alerting.messages import (
    ALERT_MEANINGS,
    ALERT_TITLES,
    DEFAULT_DASHBOARD_URL,
    IncidentView,
    action_of,
    format_time,
)
from monitor.alerting.rules import ALERTMANAGER_NAMES
from monitor.clock import Clock

__all__ = ["AlertmanagerPusher", "AlertmanagerSink", "AmAlert"]

log = structlog.get_logger()

_PUSH_BATCH = 500  # alerts per request: a restart re-posting thousands of incidents stays in reasonable requests


@dataclass(frozen=True, slots=True)
class AmAlert:
    """One postable alert. Its identity in Alertmanager is its label set, so only stable values are labels;
    everything that may change during an incident (reason, stage) goes into the annotations."""

    alertname: str
    severity: str
    platform: str
    connection_id: str
    starts_at: datetime
    summary: str = ""
    description: str = ""
    ends_at: datetime | None = None  # in the past ends the alert; in the future lets it expire if we stop posting
    generator_url: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)  # extra annotations (action_url, ...)

    def __post_init__(self) -> None:
        if self.ends_at is not None and self.ends_at < self.starts_at:
            raise ValueError("an alert cannot end before it starts")

    @property
    def labels(self) -> dict[str, str]:
        return {
            "alertname": self.alertname,
            "severity": self.severity,
            "platform": self.platform,
            "connection_id": self.connection_id,
        }

    def to_json(self) -> dict[str, Any]:
        """The `postableAlert` object of Alertmanager's v2 API."""
        annotations = {"summary": self.summary, "description": self.description, **self.annotations}
        body: dict[str, Any] = {
            "labels": self.labels,
            "annotations": {k: v for k, v in annotations.items() if v},
            "startsAt": _rfc3339(self.starts_at),
        }
        if self.ends_at is not None:
            body["endsAt"] = _rfc3339(self.ends_at)
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body

    @classmethod
    def of(
        cls,
        view: IncidentView,
        *,
        ends_at: datetime | None = None,
        generator_url: str | None = None,
        dashboard_url: str = DEFAULT_DASHBOARD_URL,
    ) -> AmAlert:
        """The alert for an incident; pass `ends_at` (the resolve time) to end it."""
        store = view.store_name or view.name
        where = f"{view.platform}, {store}" if store else view.platform
        summary = f"{ALERT_TITLES[view.alert]}: connection {view.connection_id} ({where})"
        reason = f" Reason: {view.reason}." if view.reason else ""
        description = (
            f"{ALERT_MEANINGS[view.alert]} Stage {view.stage}, health {view.health}, since "
            f"{format_time(view.since)}.{reason}"
        )
        _, action_url = action_of(view, dashboard_url)
        return cls(
            alertname=ALERTMANAGER_NAMES[view.alert],
            severity=str(view.severity),
            platform=view.platform,
            connection_id=view.connection_id,
            starts_at=view.since,
            summary=summary,
            description=description,
            ends_at=ends_at,
            generator_url=generator_url,
            annotations={"action_url": action_url, "reason": view.reason},
        )


class AlertmanagerSink:
    """Posts alerts to one Alertmanager; a failed push raises DeliveryError (retryable unless refused)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, timeout: float = 10.0) -> None:
        self._session = session
        self._endpoint = url.rstrip("/") + "/api/v2/alerts"
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def push(self, alerts: Sequence[AmAlert]) -> None:
        """Post `alerts` in one request (firing ones refresh, ones with a past `endsAt` resolve)."""
        if not alerts:
            return
        body = [alert.to_json() for alert in alerts]
        try:
            async with self._session.post(self._endpoint, json=body, timeout=self._timeout) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The exception text can carry the URL, which may hold basic-auth credentials: keep only its type.
            log.info("alertmanager unreachable", error=type(exc).__name__, alerts=len(alerts))
            raise DeliveryError(f"alertmanager unreachable: {type(exc).__name__}", code="connection") from None
        if 200 <= status < 300:
            log.debug("alertmanager alerts pushed", alerts=len(alerts))
            return
        permanent = 400 <= status < 500 and status != 429
        log.warning("alertmanager push failed", status=status, alerts=len(alerts), permanent=permanent)
        raise DeliveryError(f"alertmanager answered HTTP {status}", code=f"http_{status}", permanent=permanent)


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("alert times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertmanagerPusher:
    """Keeps Alertmanager in step with the engine: a newly firing incident is pushed at once, every firing one is
    re-posted each `resend` with `endsAt` = now + 4 x resend (so they expire if the daemon dies), and a resolved
    one is posted once with its end. A failed push is retried with backoff; nothing here is persisted, since the
    first full re-post after a restart restores Alertmanager's view."""

    def __init__(
        self,
        sink: AlertmanagerSink,
        clock: Clock,
        *,
        resend: timedelta = timedelta(minutes=1),
        dashboard_url: str = DEFAULT_DASHBOARD_URL,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._resend = resend
        self._dashboard_url = dashboard_url
        self._firing: dict[str, IncidentView] = {}
        self._urgent: set[str] = set()
        self._ending: dict[str, IncidentView] = {}
        self._last_full: datetime | None = None
        self._retry_at: datetime | None = None
        self._failures = 0
        self._wake = asyncio.Event()
        self._stopping = False

    def fire(self, key: str, view: IncidentView, *, urgent: bool = True) -> None:
        """An incident fires (urgent: push now) or its details changed (next re-post)."""
        self._firing[key] = view
        self._ending.pop(key, None)
        if urgent:
            self._urgent.add(key)
            self._wake.set()

    def end(self, key: str, view: IncidentView) -> None:
        """An incident resolved: post its end."""
        self._firing.pop(key, None)
        self._urgent.discard(key)
        self._ending[key] = view
        self._wake.set()

    def due(self) -> bool:
        now = self._clock.now()
        if self._retry_at is not None and now < self._retry_at:
            return False
        resend_due = self._last_full is None or now - self._last_full >= self._resend
        return bool(self._urgent or self._ending or (resend_due and self._firing))

    async def push_due(self) -> bool:
        """Push what is due (new firings, ends, and everything when the resend interval passed); True on success."""
        now = self._clock.now()
        full = self._last_full is None or now - self._last_full >= self._resend
        keys = list(self._firing) if full else sorted(self._urgent)
        ends_at = now + 4 * self._resend
        batch = [AmAlert.of(self._firing[k], ends_at=ends_at, dashboard_url=self._dashboard_url) for k in keys]
        ending = dict(self._ending)
        for view in ending.values():
            end = max(view.resolved_at or now, view.since)
            batch.append(AmAlert.of(view, ends_at=end, dashboard_url=self._dashboard_url))
        if not batch:
            self._last_full = now if full else self._last_full
            return True
        try:
            for start in range(0, len(batch), _PUSH_BATCH):
                await self._sink.push(batch[start : start + _PUSH_BATCH])
        except DeliveryError as exc:
            self._failures += 1
            self._retry_at = now + timedelta(seconds=min(60.0, 2.0 ** min(self._failures - 1, 6)))
            log.warning("alertmanager push deferred", error=exc.code, alerts=len(batch), failures=self._failures)
            return False
        self._failures = 0
        self._retry_at = None
        self._urgent.difference_update(keys)
        for key in ending:
            self._ending.pop(key, None)
        if full:
            self._last_full = now
        return True

    async def run(self, poll: float = 0.5) -> None:
        """Push until stopped (wall-time polling; the clock decides what is due)."""
        while not self._stopping:
            if self.due():
                try:
                    await self.push_due()
                except Exception:  # a bug must not end the pushes for good
                    log.exception("alertmanager push crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)
            self._wake.clear()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

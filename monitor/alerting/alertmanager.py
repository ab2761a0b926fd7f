"""Pushes incidents to Alertmanager's `POST /api/v2/alerts`, so teams can reuse their routing, silences and
inhibition. The engine re-posts firing alerts every resend interval and posts `endsAt` to end one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

__all__ = ["AlertmanagerSink", "AmAlert"]

log = structlog.get_logger()


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

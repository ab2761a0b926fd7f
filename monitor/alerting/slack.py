"""Slack delivery through slack_sdk's async clients: an incoming webhook, or a bot token with a channel.

One call is one attempt. slack_sdk's own retry handlers are off because the outbox owns retries and pacing;
every failure becomes a `DeliveryError` saying whether retrying can help and how long Slack asked to wait."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TextIO

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from monitor.alerting import DeliveryError
from monitor.alerting.messages import SlackMessage

__all__ = [
    "DEFAULT_SLACK_API_URL",
    "ConsoleSink",
    "Delivered",
    "DeliveryError",
    "MessageSink",
    "SlackBotSink",
    "SlackWebhookSink",
    "retry_after_seconds",
]

log = structlog.get_logger()

DEFAULT_SLACK_API_URL = "https://slack.com/api/"

# slack_sdk logs the webhook URL and request bodies at DEBUG through the logger it is given. The webhook URL
# is a secret, so the clients get this logger, which never goes below INFO whatever the root configuration.
_SDK_LOGGER = logging.getLogger(__name__ + ".sdk")
_SDK_LOGGER.setLevel(logging.INFO)

# Web API `error` values worth retrying; every other error says the request itself is wrong.
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_CODE = re.compile(r"^[a-z0-9_]{1,40}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_MAX_HISTORY_PAGES = 20


@dataclass(frozen=True, slots=True)
class Delivered:
    """Slack accepted a message. Bot mode knows its `ts` and channel id; an incoming webhook knows neither."""

    ts: str | None
    channel: str | None


class MessageSink(Protocol):
    """Anything that can post a rendered message (webhook, bot, console)."""

    async def post(self, payload: SlackMessage) -> Delivered: ...


class SlackWebhookSink:
    """An incoming webhook: posts only (no threads, no edits, no history)."""

    def __init__(self, url: str, *, session: aiohttp.ClientSession | None = None, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._client = AsyncWebhookClient(
            url=url, session=session, timeout=max(1, int(timeout)), logger=_SDK_LOGGER, retry_handlers=[]
        )

    async def post(self, payload: SlackMessage) -> Delivered:
        """Post one message; raise DeliveryError unless Slack answered 200."""
        body = {**payload.to_dict(), "unfurl_links": False, "unfurl_media": False}
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.send_dict(body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _unreachable("webhook", exc) from None
        if response.status_code == 200:
            return Delivered(ts=None, channel=None)
        raise _failed(
            "webhook",
            response.status_code,
            response.headers,
            (response.body or "").strip(),
        )


class SlackBotSink:
    """A bot token and one channel: posts parents, threads updates under them, edits them, reads history."""

    def __init__(
        self,
        token: str,
        channel: str,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.channel = channel
        self._channel_id: str | None = channel if _CHANNEL_ID.match(channel) else None
        self._timeout = timeout
        self._client = AsyncWebClient(
            token=token,
            base_url=base_url or DEFAULT_SLACK_API_URL,
            session=session,
            timeout=max(1, int(timeout)),
            logger=_SDK_LOGGER,
            retry_handlers=[],
        )

    @property
    def channel_id(self) -> str | None:
        """The channel's id once known (configured as an id, learnt from a post, or looked up)."""
        return self._channel_id

    async def post(
        self, payload: SlackMessage, *, thread_ts: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Delivered:
        """chat.postMessage, in the thread of `thread_ts` when given, tagged with message `metadata`
        ({"event_type": ..., "event_payload": {...}}) so that find_by_metadata can find it after a crash."""
        data = await self._call(
            "chat.postMessage",
            self._client.chat_postMessage(
                channel=self._channel_id or self.channel,
                text=payload.text,
                blocks=list(payload.blocks),
                thread_ts=thread_ts,
                metadata=metadata,
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        return self._delivered(data)

    async def update(self, channel: str, ts: str, payload: SlackMessage) -> Delivered:
        """chat.update: replace the message `ts` (the incident's parent) with `payload`."""
        data = await self._call(
            "chat.update",
            self._client.chat_update(channel=channel, ts=ts, text=payload.text, blocks=list(payload.blocks)),
        )
        return self._delivered(data)

    async def find_by_metadata(
        self, event_type: str, key: str, since: datetime, *, thread_ts: str | None = None
    ) -> str | None:
        """The ts of a message posted since `since` with metadata {event_type, event_payload: {"key": key}},
        in the channel (or among the replies of `thread_ts`); used to avoid re-sending after a crash."""
        channel = await self._resolve_channel()
        oldest = f"{since.timestamp():.6f}"
        cursor: str | None = None
        for _ in range(_MAX_HISTORY_PAGES):
            if thread_ts is None:
                call = self._client.conversations_history(
                    channel=channel, oldest=oldest, include_all_metadata=True, limit=200, cursor=cursor
                )
                data = await self._call("conversations.history", call)
            else:
                call = self._client.conversations_replies(
                    channel=channel,
                    ts=thread_ts,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
                data = await self._call("conversations.replies", call)
            for message in data.get("messages") or ():
                if _has_metadata(message, event_type, key):
                    return str(message["ts"])
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                return None
        log.warning("slack history search truncated", event_type=event_type, pages=_MAX_HISTORY_PAGES)
        return None

    async def _resolve_channel(self) -> str:
        """conversations.history needs a channel id; a configured `#name` is looked up once."""
        if self._channel_id is not None:
            return self._channel_id
        name = self.channel.lstrip("#")
        cursor: str | None = None
        for _ in range(_MAX_HISTORY_PAGES):
            call = self._client.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
            )
            data = await self._call("conversations.list", call)
            for found in data.get("channels") or ():
                if isinstance(found, dict) and found.get("name") == name and found.get("id"):
                    self._channel_id = str(found["id"])
                    return self._channel_id
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                break
        raise DeliveryError("slack channel not found", code="channel_not_found", permanent=True)

    def _delivered(self, data: Mapping[str, Any]) -> Delivered:
        channel = data.get("channel")
        if isinstance(channel, str) and channel:
            self._channel_id = self._channel_id or channel
        ts = data.get("ts")
        return Delivered(ts=str(ts) if ts is not None else None, channel=channel if isinstance(channel, str) else None)

    async def _call(self, method: str, call: Awaitable[AsyncSlackResponse]) -> Mapping[str, Any]:
        """Await one slack_sdk call (a coroutine) and turn every failure into a DeliveryError."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await call
        except SlackApiError as exc:
            status, headers, error = _describe(exc.response)
            raise _failed(method, status, headers, error) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _unreachable(method, exc) from None
        except SlackClientError as exc:
            raise DeliveryError(
                f"slack {method} refused the request: {type(exc).__name__}",
                code="client_error",
                permanent=True,
            ) from None
        data = response.data
        return data if isinstance(data, dict) else {}


class ConsoleSink:
    """Prints the plain-text fallback: what the demo uses when no Slack target is configured."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    async def post(self, payload: SlackMessage) -> Delivered:
        """Write one message as one line block."""
        self._stream.write(f"[slack] {payload.text}\n")
        self._stream.flush()
        return Delivered(ts=None, channel="console")


# ------------------------------------------------------------------------------------------------------------


def _has_metadata(message: Any, event_type: str, key: str) -> bool:
    if not isinstance(message, dict):
        return False
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != event_type:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, dict) and payload.get("key") == key and message.get("ts") is not None


def _describe(response: Any) -> tuple[int, Mapping[str, str], str]:
    """(status, headers, Slack `error`) of whatever slack_sdk attached to a SlackApiError."""
    status = getattr(response, "status_code", None) or getattr(response, "status", 0) or 0
    headers = getattr(response, "headers", None) or {}
    data = getattr(response, "data", None)
    error = str(data.get("error") or "") if isinstance(data, dict) else ""
    return int(status), headers, error


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The `Retry-After` header in seconds (Slack sends an integer), or None when absent or unreadable."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def _failed(method: str, status: int, headers: Mapping[str, str], error: str) -> DeliveryError:
    code = error if _CODE.match(error) else ""
    if status == 429 or code == "ratelimited":
        retry_after = retry_after_seconds(headers)
        log.info("slack rate limited", method=method, retry_after=retry_after)
        return DeliveryError(f"slack {method} rate limited", code="rate_limited", retry_after=retry_after)
    if status >= 500 or (status == 200 and code in _TRANSIENT_ERRORS):
        log.info("slack delivery failed", method=method, status=status, error=code, permanent=False)
        return DeliveryError(f"slack {method} failed: HTTP {status} {code}".rstrip(), code=code or f"http_{status}")
    log.warning("slack delivery refused", method=method, status=status, error=code, permanent=True)
    return DeliveryError(
        f"slack {method} refused: HTTP {status} {code}".rstrip(),
        code=code or f"http_{status}",
        permanent=True,
    )


def _unreachable(method: str, exc: BaseException) -> DeliveryError:
    # The exception text can carry the URL (a secret for webhooks), so only its type is kept.
    log.info("slack unreachable", method=method, error=type(exc).__name__)
    return DeliveryError(f"slack {method} unreachable: {type(exc).__name__}", code="connection")

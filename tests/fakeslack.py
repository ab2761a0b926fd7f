"""A local fake Slack for tests: a real aiohttp server on 127.0.0.1 that the real slack_sdk clients talk to.

It records every request, keeps the messages it accepted (with threads, edits and metadata), and can be told
to fail: `fake.fail(500, times=3)` then `fake.fail(429, retry_after=2)` makes the next three requests answer
500, the fourth 429 with `Retry-After: 2`, and the rest succeed.

Endpoints: incoming webhooks (`POST /services/T…/B…/<name>`, answers "ok"), and under `/api/`:
chat.postMessage, chat.update, conversations.history, conversations.replies, conversations.list, auth.test.

Use it as `async with FakeSlack() as fake:` or through the `fake_slack` fixture (register this module in
tests/conftest.py `pytest_plugins`)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest
from aiohttp import web

from monitor.clock import Clock, SystemClock

Handler = Callable[[web.Request, "RecordedRequest"], dict[str, Any]]

DEFAULT_TOKEN = "xoxb-fake-bot-token"
DEFAULT_CHANNELS: Mapping[str, str] = {"alerts": "C0ALERTS01", "commerce-oncall": "C0COMMERCE"}
WEBHOOK_PREFIX = "/services/T0FAKETEAM/B0FAKEHOOK/"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    json: Any  # the parsed JSON body, or None
    form: dict[str, str]

    @property
    def api_method(self) -> str | None:
        """`chat.postMessage` for `/api/chat.postMessage`; None for webhooks."""
        return self.path.removeprefix("/api/") if self.path.startswith("/api/") else None

    def param(self, name: str) -> Any:
        """A parameter wherever slack_sdk put it: JSON body, form body, then query string."""
        if isinstance(self.json, dict) and name in self.json:
            return self.json[name]
        if name in self.form:
            return self.form[name]
        return self.query.get(name)


@dataclass
class FakeMessage:
    """A message the fake accepted. `channel` is a channel id, or `webhook:<name>` for an incoming webhook."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    via: str  # "bot" or "webhook"
    thread_ts: str | None = None
    metadata: dict[str, Any] | None = None
    edits: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)  # earlier (text, blocks)
    attachments: list[dict[str, Any]] = field(default_factory=list)  # legacy attachments (Alertmanager sends these)

    def to_api(self) -> dict[str, Any]:
        """The message as conversations.history returns it."""
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text, "blocks": self.blocks}
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.edits:
            out["edited"] = {"ts": self.ts}
        return out


@dataclass(frozen=True, slots=True)
class Fault:
    """A programmed failure for the next matching request."""

    status: int
    retry_after: float | None = None
    error: str | None = None  # the Slack `error` (Web API) or body (webhook); a default fits the status
    path: str | None = None  # only requests to this path, e.g. "/api/chat.update"; None matches any


class FakeSlack:
    """The fake server; start it with `async with` (or start()/close())."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        channels: Mapping[str, str] = DEFAULT_CHANNELS,
        clock: Clock | None = None,
    ) -> None:
        self.token = token
        self.channels = dict(channels)  # name (without '#') -> id
        self.requests: list[RecordedRequest] = []
        self.messages: list[FakeMessage] = []
        self._clock = clock or SystemClock()
        self._faults: deque[Fault] = deque()
        self._last_ts = 0.0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._api: dict[str, Handler] = {
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
            "conversations.list": self._list,
            "auth.test": lambda _request, _rec: {"ok": True, "user_id": "U0FAKEBOT", "team_id": "T0FAKETEAM"},
        }

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- what tests use --------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The value for SLACK_API_URL / AsyncWebClient(base_url=...)."""
        return f"{self.url}/api/"

    @property
    def webhook_url(self) -> str:
        """An incoming-webhook URL; its messages are recorded on channel `webhook:default`."""
        return self.webhook_url_for("default")

    def webhook_url_for(self, name: str) -> str:
        """Another incoming-webhook URL (one per route); messages land on channel `webhook:<name>`."""
        return f"{self.url}{WEBHOOK_PREFIX}{name}"

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        error: str | None = None,
        path: str | None = None,
    ) -> None:
        """Queue `times` failures answered, in order, to the next matching requests."""
        self._faults.extend([Fault(status, retry_after, error, path)] * times)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def channel_id(self, name_or_id: str) -> str | None:
        """The id of `#name`, `name` or an id; None when no such channel exists."""
        name = name_or_id.lstrip("#")
        if name in self.channels:
            return self.channels[name]
        return name_or_id if name_or_id in self.channels.values() else None

    def parents(self, channel: str | None = None) -> list[FakeMessage]:
        """Top-level messages (not thread replies), oldest first, optionally of one channel (name or id)."""
        wanted = None if channel is None else (self.channel_id(channel) or channel)
        return [
            m
            for m in self.messages
            if (m.thread_ts is None or m.thread_ts == m.ts) and (wanted is None or m.channel == wanted)
        ]

    def replies(self, thread_ts: str) -> list[FakeMessage]:
        """Replies in the thread of `thread_ts`, oldest first."""
        return [m for m in self.messages if m.thread_ts == thread_ts and m.ts != thread_ts]

    def message(self, ts: str) -> FakeMessage:
        """The message with this ts (KeyError when none)."""
        for m in self.messages:
            if m.ts == ts:
                return m
        raise KeyError(ts)

    def calls(self, api_method: str) -> list[RecordedRequest]:
        """Recorded requests to one Web API method (e.g. `chat.update`), failed ones included."""
        return [r for r in self.requests if r.api_method == api_method]

    async def wait_for_messages(self, count: int, within: float = 5.0) -> list[FakeMessage]:
        """Wait until at least `count` messages were accepted (delivery is asynchronous), then return all."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.messages) >= count)
        return list(self.messages)

    async def wait_for_requests(self, count: int, within: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least `count` requests arrived, whatever they were answered."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    # -- server ----------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = await _record(request)
        self.requests.append(record)
        try:
            fault = self._take_fault(record.path)
            if fault is not None:
                return _fault_response(fault, webhook=record.api_method is None)
            if record.path.startswith(WEBHOOK_PREFIX) and request.method == "POST":
                return self._webhook(record)
            handler = self._api.get(record.api_method or "")
            if handler is None:
                return web.Response(status=404, text="no_service" if record.api_method is None else "unknown")
            denied = self._auth_error(request)
            if denied is not None:
                return web.json_response({"ok": False, "error": denied})
            return web.json_response(handler(request, record))
        finally:
            async with self._changed:
                self._changed.notify_all()

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.path is None or fault.path == path:
                self._faults.remove(fault)
                return fault
        return None

    def _auth_error(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "not_authed"
        return None if header.removeprefix("Bearer ") == self.token else "invalid_auth"

    def _next_ts(self) -> str:
        now = self._clock.now().timestamp()
        self._last_ts = max(now, self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    def _webhook(self, record: RecordedRequest) -> web.Response:
        body = record.json if isinstance(record.json, dict) else {}
        name = record.path.removeprefix(WEBHOOK_PREFIX)
        if not name or "/" in name:
            return web.Response(status=404, text="no_service")
        if not body.get("text") and not body.get("blocks") and not body.get("attachments"):
            return web.Response(status=400, text="no_text")
        self.messages.append(
            FakeMessage(
                channel=f"webhook:{name}",
                ts=self._next_ts(),
                text=str(body.get("text") or ""),
                blocks=list(body.get("blocks") or []),
                via="webhook",
                metadata=body.get("metadata"),
                attachments=list(body.get("attachments") or []),
            )
        )
        return web.Response(text="ok")

    def _post_message(self, _request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        channel = self.channel_id(str(record.param("channel") or ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        text, blocks = str(record.param("text") or ""), _as_json(record.param("blocks")) or []
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        thread_ts = record.param("thread_ts")
        if thread_ts is not None:
            thread_ts = str(thread_ts)
            if not any(m.ts == thread_ts and m.channel == channel for m in self.messages):
                return {"ok": False, "error": "thread_not_found"}
        message = FakeMessage(
            channel=channel,
            ts=self._next_ts(),
            text=text,
            blocks=blocks,
            via="bot",
            thread_ts=thread_ts,
            metadata=_as_json(record.param("metadata")),
        )
        self.messages.append(message)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.to_api()}

    def _update(self, _request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        channel = self.channel_id(str(record.param("channel") or ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = str(record.param("ts") or "")
        found = next((m for m in self.messages if m.ts == ts and m.channel == channel), None)
        if found is None:
            return {"ok": False, "error": "message_not_found"}
        found.edits.append((found.text, found.blocks))
        found.text = str(record.param("text") or "")
        found.blocks = _as_json(record.param("blocks")) or []
        return {"ok": True, "channel": channel, "ts": ts, "text": found.text}

    def _history(self, _request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        channel = str(record.param("channel") or "")
        if channel not in self.channels.values():  # like Slack: history needs an id, not a #name
            return {"ok": False, "error": "channel_not_found"}
        found = [m for m in self.parents(channel) if _in_window(m.ts, record)]
        return _page(list(reversed(found)), record)  # newest first, as Slack returns history

    def _replies(self, _request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        channel = str(record.param("channel") or "")
        if channel not in self.channels.values():
            return {"ok": False, "error": "channel_not_found"}
        ts = str(record.param("ts") or "")
        parent = [m for m in self.messages if m.ts == ts and m.channel == channel]
        if not parent:
            return {"ok": False, "error": "thread_not_found"}
        found = [m for m in [*parent, *self.replies(ts)] if _in_window(m.ts, record)]
        return _page(found, record)

    def _list(self, _request: web.Request, _record: RecordedRequest) -> dict[str, Any]:
        channels = [{"id": cid, "name": name, "is_archived": False} for name, cid in self.channels.items()]
        return {"ok": True, "channels": channels, "response_metadata": {"next_cursor": ""}}


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A started fake Slack, closed after the test."""
    async with FakeSlack() as fake:
        yield fake


# ------------------------------------------------------------------------------------------------------------


async def _record(request: web.Request) -> RecordedRequest:
    raw = await request.read()
    body: Any = None
    form: dict[str, str] = {}
    if raw and request.content_type == "application/json":
        body = json.loads(raw)
    elif raw and request.content_type == "application/x-www-form-urlencoded":
        form = {k: str(v) for k, v in (await request.post()).items()}
    return RecordedRequest(
        method=request.method,
        path=request.path,
        headers=dict(request.headers),
        query=dict(request.query),
        json=body,
        form=form,
    )


def _fault_response(fault: Fault, *, webhook: bool) -> web.Response:
    headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    default = "ratelimited" if fault.status == 429 else "internal_error" if fault.status >= 500 else "invalid"
    error = fault.error or default
    if webhook:
        return web.Response(status=fault.status, text=error, headers=headers)
    return web.json_response({"ok": False, "error": error}, status=fault.status, headers=headers)


def _as_json(value: Any) -> Any:
    """Form-encoded calls send lists and objects as JSON strings; JSON calls send them as they are."""
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def _in_window(ts: str, record: RecordedRequest) -> bool:
    inclusive = str(record.param("inclusive") or "0") in {"1", "true"}
    oldest, latest = record.param("oldest"), record.param("latest")
    value = float(ts)
    if oldest is not None and (value < float(oldest) or (value == float(oldest) and not inclusive)):
        return False
    return not (latest is not None and (value > float(latest) or (value == float(latest) and not inclusive)))


def _page(messages: list[FakeMessage], record: RecordedRequest) -> dict[str, Any]:
    limit = int(record.param("limit") or 100)
    start = int(record.param("cursor") or 0)
    chunk = messages[start : start + limit]
    more = start + limit < len(messages)
    return {
        "ok": True,
        "messages": [m.to_api() for m in chunk],
        "has_more": more,
        "response_metadata": {"next_cursor": str(start + limit) if more else ""},
    }

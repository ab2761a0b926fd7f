"""The operator's HTTP surface: /metrics, /healthz, /readyz and the JSON drill-down API. Handlers only translate
HTTP to calls on the daemon's parts; no lifecycle rule lives here."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.domain import ConnectionState, Health, LifecycleStage, Transition
from monitor.store import ConnectionQuery, StoreError

if TYPE_CHECKING:
    from monitor.app import Daemon

HIDDEN = {"access_token"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def connection_json(state: ConnectionState) -> dict[str, Any]:
    """A connection as the API shows it: every field but the access token."""
    out: dict[str, Any] = {}
    for f in fields(state):
        if f.name in HIDDEN:
            continue
        value = getattr(state, f.name)
        if isinstance(value, datetime):
            value = _iso(value)
        elif f.name == "pending_webhooks":
            value = [{"code": p.code, "seen_at": _iso(p.seen_at)} for p in value]
        out[f.name] = value
    out["deleted"] = state.deleted_at is not None
    return out


def transition_json(t: Transition) -> dict[str, Any]:
    return {
        "dimension": t.dimension.value,
        "from": t.from_,
        "to": t.to,
        "at": _iso(t.at),
        "source": t.source.value,
        "reason": t.reason,
    }


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f'{{"error": "{message}"}}', content_type="application/json")


class AdminApi:
    """Handlers bound to one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/api/v1/connections", self.connections),
            web.get("/api/v1/connections/{connection_id}", self.connection),
            web.get("/api/v1/alerts", self.alerts),
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        await self._daemon.refresh_gauges()
        body = await self._daemon.exposition.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, checks = await self._daemon.readiness()
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def connections(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            stage = LifecycleStage(q["lifecycle_stage"]) if "lifecycle_stage" in q else None
            health = Health(q["health"]) if "health" in q else None
            limit = int(q.get("limit", "100"))
        except ValueError as exc:
            raise _bad(f"invalid filter: {exc}") from None
        if not 1 <= limit <= 1000:
            raise _bad("limit must be between 1 and 1000")
        stalled = q.get("stalled", "").lower() in {"1", "true", "yes"}
        query = ConnectionQuery(
            lifecycle_stage=stage,
            health=health,
            platform=q.get("platform"),
            ids=self._daemon.stalled_ids() if stalled else None,
            include_deleted=q.get("include_deleted", "").lower() in {"1", "true", "yes"},
            limit=limit,
            cursor=q.get("cursor"),
        )
        try:
            page = await self._daemon.store.list_connections(query)
        except StoreError:
            raise web.HTTPServiceUnavailable(text='{"error": "store unavailable"}') from None
        return web.json_response({"items": [connection_json(s) for s in page.items], "next_cursor": page.next_cursor})

    async def connection(self, request: web.Request) -> web.Response:
        connection_id = request.match_info["connection_id"]
        try:
            state = await self._daemon.store.get_connection(connection_id)
            history = await self._daemon.store.transitions(connection_id) if state else []
        except StoreError:
            raise web.HTTPServiceUnavailable(text='{"error": "store unavailable"}') from None
        if state is None:
            raise web.HTTPNotFound(text='{"error": "unknown connection"}', content_type="application/json")
        body = connection_json(state)
        body["transitions"] = [transition_json(t) for t in history]
        return web.json_response(body)

    async def alerts(self, request: web.Request) -> web.Response:
        return web.json_response({"items": self._daemon.open_alerts(), "next_cursor": None})

"""The simulator's HTTP face: Rutter's connection endpoints under `/versioned`, test controls under `/_sim`.

Rutter's side follows docs/rutter-api.md: HTTP Basic auth with the client id and secret (401 with Rutter's
`INVALID_CREDENTIALS` body), a required `X-Rutter-Version`, `X-Rutter-Request-ID` on every response, and 429
once more than `rate_limit` requests arrive in a sliding 10-second window.

Inferred, not documented by Rutter (docs/rutter-api.md §4 gives the error schema, but the API-request error
codes and the rate-limit body were not visible): 400s use `error_type` "API_REQUEST_ERROR" and 429s use
`error_type` "RATE_LIMIT_ERROR", `error_code` "RATE_LIMIT_EXCEEDED". Only admitted (non-429) requests fill the
rate-limit window; every request, 429s and 401s included, is counted in the statistics.

The `/_sim` controls need no auth. A control that changes a connection delivers the webhooks it caused before
answering, so a test that gets the answer knows the receiver has had them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, Protocol

import structlog
from aiohttp import web

from monitor.clock import Clock
from monitor.domain import ListStatus
from monitor.simulator import views
from monitor.simulator.config import InitialMix, SimulatorConfig
from monitor.simulator.model import ALL_LIST_STATUSES, DEFAULT_LIST_STATUSES, FleetModel, SimError
from monitor.simulator.stats import RequestStats, SlidingWindow
from monitor.simulator.webhooks import WebhookSender

log = structlog.get_logger()

API_PREFIX = "/versioned"
REQUEST_ID_HEADER = "X-Rutter-Request-ID"
VERSION_HEADER = "X-Rutter-Version"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimulatorPort(Protocol):
    """What the HTTP layer needs from the running simulator."""

    config: SimulatorConfig
    clock: Clock
    model: FleetModel
    stats: RequestStats
    webhooks: WebhookSender

    async def step(self) -> None: ...

    async def drain_webhooks(self) -> None: ...


def _error(status: int, error_type: str, error_code: str, message: str) -> web.Response:
    return web.json_response(views.error_body(error_type, error_code, message), status=status)


def _invalid_credentials() -> web.Response:
    return _error(401, "CONNECTION_ERROR", "INVALID_CREDENTIALS", "Invalid credentials to access this connection.")


def _bad_request(code: str, message: str) -> web.Response:
    return _error(400, "API_REQUEST_ERROR", code, message)


def _endpoint(request: web.Request) -> str:
    """A bounded name for the endpoint a request hit (its route, or "unknown")."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unknown"
    return f"{request.method} {resource.canonical.removeprefix(API_PREFIX)}"


class SimulatorServer:
    """The aiohttp application of one simulator."""

    def __init__(self, sim: SimulatorPort) -> None:
        self._sim = sim
        self._window = SlidingWindow()
        self._credentials = f"{sim.config.client_id}:{sim.config.client_secret}".encode()

    def app(self) -> web.Application:
        """The application: Rutter's API, then the test controls."""
        app = web.Application(middlewares=[self._api_middleware])
        app.router.add_get(f"{API_PREFIX}/connections", self.list_connections)
        app.router.add_get(f"{API_PREFIX}/connections/status", self.connection_status)
        app.router.add_get(f"{API_PREFIX}/connections/access_token", self.connection_details)
        app.router.add_get("/_sim/connections", self.sim_list)
        app.router.add_post("/_sim/connections", self.sim_create)
        app.router.add_post("/_sim/bulk", self.sim_bulk)
        app.router.add_get("/_sim/connections/{id}", self.sim_get)
        app.router.add_post("/_sim/connections/{id}/{action}", self.sim_action)
        app.router.add_post("/_sim/step", self.sim_step)
        app.router.add_post("/_sim/drain", self.sim_drain)
        app.router.add_get("/_sim/stats", self.sim_stats)
        app.router.add_post("/_sim/stats/reset", self.sim_stats_reset)
        app.router.add_get("/_sim/webhooks", self.sim_webhooks)
        app.router.add_put("/_sim/webhook_url", self.sim_webhook_url)
        return app

    # ------------------------------------------------------------------------------------------ Rutter API

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/") and request.path != API_PREFIX:
            return await handler(request)
        response = await self._guarded(request, handler)
        response.headers[REQUEST_ID_HEADER] = str(uuid.uuid4())
        self._sim.stats.record(_endpoint(request), response.status, self._sim.clock.now())
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        config = self._sim.config
        if not self._authorized(request.headers.get("Authorization")):
            return _invalid_credentials()
        now = self._sim.clock.now()
        if self._window.count(now) >= config.rate_limit:
            response = _error(429, "RATE_LIMIT_ERROR", "RATE_LIMIT_EXCEEDED", "Too many requests, slow down.")
            if config.retry_after is not None:
                response.headers["Retry-After"] = f"{config.retry_after:g}"
            return response
        self._window.add(now)
        version = request.headers.get(VERSION_HEADER)
        if version is None:
            return _bad_request("MISSING_VERSION_HEADER", f"The {VERSION_HEADER} header is required.")
        if version not in config.api_versions:
            return _bad_request("INVALID_VERSION", f"Unknown {VERSION_HEADER}: {version[:40]}.")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(404, "API_REQUEST_ERROR", "ENDPOINT_NOT_FOUND", "This endpoint does not exist.")
        except web.HTTPMethodNotAllowed:
            return _error(405, "API_REQUEST_ERROR", "METHOD_NOT_ALLOWED", "Method not allowed.")

    def _authorized(self, header: str | None) -> bool:
        """HTTP Basic with the organization's client id and secret, compared in constant time."""
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(given, self._credentials)

    async def list_connections(self, request: web.Request) -> web.Response:
        """`GET /connections`: unpaginated, filtered by `status` (default: active, not_ready, unhealthy)."""
        raw = request.query.get("status")
        if raw is None:
            statuses = DEFAULT_LIST_STATUSES
        elif raw == "any":
            statuses = ALL_LIST_STATUSES
        elif raw in ListStatus.__members__.values():
            statuses = frozenset({ListStatus(raw)})
        else:
            return _bad_request("INVALID_PARAMETER", "status must be one of " + ", ".join([*ListStatus, "any"]))
        return web.Response(body=self._sim.model.list_body(statuses), content_type="application/json")

    async def connection_status(self, request: web.Request) -> web.Response:
        """`GET /connections/status?access_token=`; works for disabled and needs-update connections too."""
        token = request.query.get("access_token")
        if not token:
            return _bad_request("MISSING_ACCESS_TOKEN", "The access_token query parameter is required.")
        conn = self._sim.model.by_token(token)
        if conn is None:
            return _invalid_credentials()
        return web.json_response(views.status_body(conn, self._sim.model.org_id))

    async def connection_details(self, request: web.Request) -> web.Response:
        """`GET /connections/access_token?access_token=`: "Fetch a Connection"."""
        token = request.query.get("access_token")
        if not token:
            return _bad_request("MISSING_ACCESS_TOKEN", "The access_token query parameter is required.")
        conn = self._sim.model.by_token(token)
        if conn is None:
            return _invalid_credentials()
        return web.json_response(views.details_body(conn))

    # -------------------------------------------------------------------------------------------- controls

    async def sim_list(self, request: web.Request) -> web.Response:
        """Every live connection as the simulator sees it (ids and tokens for tests)."""
        return web.json_response({"connections": [views.sim_view(c) for c in self._sim.model.all()]})

    async def sim_get(self, request: web.Request) -> web.Response:
        try:
            conn = self._sim.model.get(request.match_info["id"])
        except KeyError:
            return web.json_response({"error": "unknown connection"}, status=404)
        return web.json_response(views.sim_view(conn))

    async def sim_create(self, request: web.Request) -> web.Response:
        """Create a connection in initial sync: `{platform, batches?, store_name?, created_at?, evolve?}`."""
        body = await _json_object(request)
        platform = body.get("platform")
        if not isinstance(platform, str) or not platform:
            return web.json_response({"error": "platform is required"}, status=400)
        created_at = body.get("created_at")
        try:
            conn = self._sim.model.create(
                platform,
                batches=int(body.get("batches", 0)),
                store_name=body.get("store_name"),
                created_at=datetime.fromisoformat(created_at) if isinstance(created_at, str) else None,
                evolve=body.get("evolve"),
            )
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(views.sim_view(conn), status=201)

    async def sim_bulk(self, request: web.Request) -> web.Response:
        """Create `n` existing connections: `{n, platforms?, mix?}`."""
        body = await _json_object(request)
        try:
            n = int(body.get("n", 0))
            platforms = body.get("platforms")
            mix = InitialMix(body["mix"]) if "mix" in body else None
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        ids = self._sim.model.bulk_create(n, platforms, mix=mix)
        return web.json_response({"created": len(ids), "connections": len(self._sim.model)})

    async def sim_action(self, request: web.Request) -> web.Response:
        """Drive one connection: ready, batch, unhealthy, needs_update, reconnect, disable, delete, entity,
        emit. `{"webhook": false}` simulates a dropped webhook."""
        model = self._sim.model
        conn_id = request.match_info["id"]
        action = request.match_info["action"]
        body = await _json_object(request)
        webhook = bool(body.get("webhook", True))
        actions: dict[str, Callable[[], object]] = {
            "ready": lambda: model.make_ready(conn_id, webhook=webhook),
            "batch": lambda: model.complete_batch(conn_id, webhook=webhook),
            "unhealthy": lambda: model.set_unhealthy(conn_id, bool(body.get("unhealthy", True))),
            "needs_update": lambda: model.needs_update(conn_id, webhook=webhook),
            "reconnect": lambda: model.reconnect(conn_id, webhook=webhook),
            "disable": lambda: model.disable(conn_id, body.get("reason"), webhook=webhook),
            "delete": lambda: model.delete(conn_id),
            "entity": lambda: model.entity(conn_id, str(body.get("code", "ORDER_CREATED")), webhook=webhook),
            "emit": lambda: model.emit(conn_id, str(body.get("code", ""))),
        }
        run = actions.get(action)
        if run is None:
            return web.json_response({"error": f"unknown action {action}"}, status=404)
        try:
            run()
        except KeyError:
            return web.json_response({"error": "unknown connection"}, status=404)
        except SimError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        log.info("sim control", action=action, connection_id=conn_id, webhook=webhook)
        await self._sim.drain_webhooks()
        return web.json_response(views.sim_view(model.get(conn_id)))

    async def sim_step(self, request: web.Request) -> web.Response:
        """Advance the fleet to the clock's now and deliver due webhooks."""
        await self._sim.step()
        return web.json_response({"version": self._sim.model.version, "connections": len(self._sim.model)})

    async def sim_drain(self, request: web.Request) -> web.Response:
        await self._sim.drain_webhooks()
        return web.json_response({"pending": self._sim.webhooks.pending})

    async def sim_stats(self, request: web.Request) -> web.Response:
        """Requests served (per endpoint, max in any 10 s window) and what happened to webhooks."""
        return web.json_response(
            {
                "requests": self._sim.stats.as_dict(),
                "webhooks": asdict(self._sim.webhooks.stats),
                "connections": len(self._sim.model),
                "version": self._sim.model.version,
            }
        )

    async def sim_stats_reset(self, request: web.Request) -> web.Response:
        self._sim.stats.reset()
        return web.json_response({"reset": True})

    async def sim_webhooks(self, request: web.Request) -> web.Response:
        """The latest delivery attempts, oldest first."""
        attempts = [
            {
                "code": a.code,
                "connection_id": a.connection_id,
                "attempt": a.attempt,
                "status": a.status,
                "at": views.iso(a.at),
            }
            for a in self._sim.webhooks.history
        ]
        return web.json_response({"attempts": attempts})

    async def sim_webhook_url(self, request: web.Request) -> web.Response:
        """Point webhooks somewhere else (`{"url": null}` stops sending)."""
        body = await _json_object(request)
        url = body.get("url")
        self._sim.webhooks.url = url if isinstance(url, str) and url else None
        return web.json_response({"url": self._sim.webhooks.url})


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or {} when it has none."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body is not JSON"}', content_type="application/json") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be an object"}', content_type="application/json")
    return data

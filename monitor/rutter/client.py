"""Rutter's API, the three read endpoints the monitor needs (docs/rutter-api.md §1, §2, §4).

Every attempt, retries included, first takes a slot of the shared rate budget. Transient failures (429,
452, 5xx, timeouts, connection errors) are retried by stamina with exponential backoff and jitter; a
`Retry-After` is waited out on the injected clock first. Nothing that leaves this module (exceptions, logs,
reprs) carries the client secret or an access token: the token travels in the query string, so aiohttp
errors are re-raised without their cause and with every `access_token=` value redacted."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import aiohttp
import stamina
import structlog

from monitor.clock import Clock
from monitor.domain import ConnectionDetails, Listing, StatusSnapshot
from monitor.ratelimit import SlidingWindowLimiter
from monitor.rutter.errors import (
    MalformedResponseError,
    RetryableError,
    RutterError,
    error_from_response,
    redact,
)
from monitor.rutter.parse import iter_listing, parse_details, parse_status

log = structlog.get_logger()

T = TypeVar("T")

VERSION_HEADER = "X-Rutter-Version"
REQUEST_ID_HEADER = "X-Rutter-Request-ID"

# A Retry-After longer than this is not waited out inside one call: the caller gets the RetryableError (with
# its retry_after) and can come back later instead of holding a job for minutes.
MAX_INLINE_RETRY_AFTER = 60.0
# Backoff between attempts without a Retry-After (stamina: min(wait_max, initial * 2**(n-1) + jitter)).
WAIT_INITIAL = 0.5
WAIT_MAX = 10.0
WAIT_JITTER = 1.0
_ERROR_BODY_BYTES = 64 * 1024


class Endpoint(StrEnum):
    """The `endpoint` label of the API metrics."""

    LIST_CONNECTIONS = "list_connections"
    CONNECTION_STATUS = "connection_status"
    CONNECTION = "connection"


class RequestObserver(Protocol):
    def __call__(self, endpoint: str, status: str, seconds: float) -> None:
        """One attempt finished: `status` is the HTTP code as a string, or "timeout" / "error"."""
        ...


class RutterClient:
    """Reads connections inside the rate budget, with retries, typed errors and no leaked secret."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        api_version: str,
        limiter: SlidingWindowLimiter,
        observer: RequestObserver | None = None,
        timeout: float = 30.0,
        attempts: int = 4,
        clock: Clock,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._session = session
        self._base_url = base_url.rstrip("/")
        # aiohttp.BasicAuth is deprecated from 3.14, whose encode_basic_auth() is new: RFC 7617 by hand
        authorization = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._secrets = (client_secret, authorization.removeprefix("Basic "))
        self._api_version = api_version
        self._headers = {
            "Authorization": authorization,
            VERSION_HEADER: api_version,
            "Accept": "application/json",
        }
        self._limiter = limiter
        self._observer = observer
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = attempts
        self._clock = clock

    def __repr__(self) -> str:
        return f"RutterClient(base_url={self._base_url!r}, api_version={self._api_version!r})"

    async def list_connections(self, status: str = "any") -> list[Listing]:
        """`GET /connections?status=…`, unpaginated as Rutter serves it, parsed item by item as it arrives."""

        async def read(response: aiohttp.ClientResponse) -> list[Listing]:
            return [item async for item in iter_listing(response.content)]

        return await self._get(Endpoint.LIST_CONNECTIONS, "/connections", {"status": status}, read)

    async def fetch_status(self, access_token: str, *, background: bool = False) -> StatusSnapshot:
        """`GET /connections/status`: readiness, health flags, disabled reason, historical sync progress.
        `background` (a routine refresh) leaves the limiter's reserve to the requests that detect changes."""
        return await self._get(
            Endpoint.CONNECTION_STATUS,
            "/connections/status",
            {"access_token": access_token},
            _json_reader(parse_status),
            token=access_token,
            background=background,
        )

    async def fetch_connection(self, access_token: str, *, background: bool = False) -> ConnectionDetails:
        """`GET /connections/access_token` ("Fetch a Connection"): store name and sync times."""
        return await self._get(
            Endpoint.CONNECTION,
            "/connections/access_token",
            {"access_token": access_token},
            _json_reader(parse_details),
            token=access_token,
            background=background,
        )

    async def _get(
        self,
        endpoint: Endpoint,
        path: str,
        params: Mapping[str, str],
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        token: str | None = None,
        background: bool = False,
    ) -> T:
        secrets = (*self._secrets, token) if token else self._secrets
        wait_first = 0.0
        retries = stamina.retry_context(
            on=_backoff_hook,
            attempts=self._attempts,
            timeout=None,
            wait_initial=WAIT_INITIAL,
            wait_max=WAIT_MAX,
            wait_jitter=WAIT_JITTER,
        )
        async for attempt in retries:
            with attempt:
                if wait_first > 0:
                    await self._clock.sleep(wait_first)
                    wait_first = 0.0
                try:
                    return await self._attempt(endpoint, path, params, read, secrets, background)
                except RutterError as exc:
                    retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                    log.info(
                        "rutter request failed",
                        endpoint=str(endpoint),
                        attempt=attempt.num,
                        error=type(exc).__name__,
                        status=exc.status,
                        error_code=exc.error_code,
                        request_id=exc.request_id,
                        retry_after=retry_after,
                        detail=str(exc),
                    )
                    if retry_after is not None:
                        wait_first = retry_after
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def _attempt(
        self,
        endpoint: Endpoint,
        path: str,
        params: Mapping[str, str],
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        secrets: tuple[str, ...],
        background: bool,
    ) -> T:
        await self._limiter.acquire(background=background)
        started = time.perf_counter()
        outcome = "error"
        try:
            async with self._session.get(
                self._base_url + path,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,  # Basic credentials are for Rutter only, not for where a 3xx points
            ) as response:
                outcome = str(response.status)
                request_id = response.headers.get(REQUEST_ID_HEADER)
                if 200 <= response.status < 300:
                    try:
                        return await read(response)
                    except MalformedResponseError as exc:
                        exc.status, exc.request_id = response.status, request_id
                        raise
                body = await response.content.read(_ERROR_BODY_BYTES)
                raise error_from_response(
                    response.status,
                    body,
                    endpoint=endpoint,
                    secrets=secrets,
                    retry_after=self._retry_after(response.headers.get("Retry-After")),
                    request_id=request_id,
                )
        except TimeoutError:
            outcome = "timeout"
            raise RetryableError(f"{endpoint}: request timed out") from None
        except aiohttp.ClientError as exc:
            outcome = "error"
            # aiohttp puts the request URL (with the access_token query parameter) into some messages
            detail = redact(str(exc), secrets)[:200]
            raise RetryableError(f"{endpoint}: {type(exc).__name__}: {detail}") from None
        finally:
            if self._observer is not None:
                self._observer(endpoint.value, outcome, time.perf_counter() - started)

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds from a `Retry-After` header (delay-seconds or HTTP-date); None if absent or unreadable."""
        if value is None:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, (when - self._clock.now()).total_seconds())


def _backoff_hook(exc: Exception) -> bool | float:
    """stamina's decision: back off and retry a RetryableError, give up on the rest.

    With a Retry-After the client waits on its own clock before the next attempt, so stamina adds no backoff
    of its own (0.0); a Retry-After too long to wait inside a call is handed to the caller instead."""
    if not isinstance(exc, RetryableError):
        return False
    if exc.retry_after is None:
        return True
    if exc.retry_after > MAX_INLINE_RETRY_AFTER:
        return False
    return 0.0


def _json_reader(
    parse: Callable[[Mapping[str, Any]], T],
) -> Callable[[aiohttp.ClientResponse], Awaitable[T]]:
    async def read(response: aiohttp.ClientResponse) -> T:
        body = await response.read()
        try:
            obj = json.loads(body)
        except ValueError:
            raise MalformedResponseError("response body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise MalformedResponseError("response body is not a JSON object")
        return parse(obj)

    return read

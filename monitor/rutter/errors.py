"""Errors at the Rutter API boundary: retryable (try again later) or rejected (Rutter said no, with a reason).

Messages are built from the endpoint name, the HTTP status and Rutter's error body, with secrets and access
tokens redacted, so they are safe to log and to show."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

# `access_token=...` in a query string, `"access_token": "..."` in JSON, `access_token: ...` in prose.
_TOKEN_PATTERN = re.compile(r"""(access_token["']?\s*[:=]\s*["']?)[^&\s"',;}\]]+""", re.IGNORECASE)
_MAX_MESSAGE = 300


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every access_token value and every one of `secrets` replaced, so it can be logged."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _TOKEN_PATTERN.sub(lambda m: m.group(1) + REDACTED, text)


class RutterError(Exception):
    """Anything that went wrong talking to Rutter. The message never contains a secret or an access token."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error_code = error_code
        self.request_id = request_id  # X-Rutter-Request-ID, for a support ticket


class RetryableError(RutterError):
    """429, 452, 5xx, timeouts and connection errors: the same request may work later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error_type=error_type, error_code=error_code, request_id=request_id)
        self.retry_after = retry_after


class RejectedError(RutterError):
    """A 4xx other than 429/452: asking again will get the same answer."""


class NotReadyError(RejectedError):
    """PRODUCT_NOT_READY: the initial sync has not finished; "not ready yet", not a failure."""


class InvalidCredentialsError(RejectedError):
    """INVALID_CREDENTIALS or 401: bad Basic credentials, or a stale access token (refresh from the list)."""


class ConnectionDisabledError(RejectedError):
    """CONNECTION_DISABLED: the status endpoint tells why."""


class NeedsUpdateError(RejectedError):
    """NEEDS_UPDATE: the merchant must re-authenticate through the link URL."""


class MalformedResponseError(RutterError):
    """A 2xx whose body is not the JSON shape Rutter documents: not retried, it would come back the same."""


RETRYABLE_STATUSES: frozenset[int] = frozenset({429, 452})

_BY_CODE: dict[str, type[RejectedError]] = {
    "PRODUCT_NOT_READY": NotReadyError,
    "INVALID_CREDENTIALS": InvalidCredentialsError,
    "CONNECTION_DISABLED": ConnectionDisabledError,
    "NEEDS_UPDATE": NeedsUpdateError,
}


def is_retryable_status(status: int) -> bool:
    """Rutter's own rate limit (429), the platform's (452) and Rutter's failures (5xx) pass with time."""
    return status in RETRYABLE_STATUSES or status >= 500


def error_from_response(
    status: int,
    body: bytes,
    *,
    endpoint: str,
    secrets: Iterable[str] = (),
    retry_after: float | None = None,
    request_id: str | None = None,
) -> RutterError:
    """The typed error for a non-2xx answer, from Rutter's `{error_type, error_code, error_message}` body."""
    error_type, error_code, error_message = _error_body(body)
    text = f"{endpoint}: Rutter answered {status}"
    if error_type or error_code:
        text += f" {error_type or '?'}/{error_code or '?'}"
    if error_message:
        text += f": {error_message}"
    message = redact(text, secrets)[:_MAX_MESSAGE]
    if is_retryable_status(status):
        return RetryableError(
            message,
            status=status,
            error_type=error_type,
            error_code=error_code,
            request_id=request_id,
            retry_after=retry_after,
        )
    cls = _BY_CODE.get(error_code or "", RejectedError)
    if cls is RejectedError and status == 401:
        cls = InvalidCredentialsError
    return cls(message, status=status, error_type=error_type, error_code=error_code, request_id=request_id)


def _error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """The three documented fields, each None when absent; a body that is not a JSON object gives Nones."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    return _text(obj.get("error_type")), _text(obj.get("error_code")), _text(obj.get("error_message"))


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return " ".join(value.split())  # one line: a message with newlines must not forge log lines
    return None

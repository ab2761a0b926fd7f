"""Alerting: pure rules (rules), message rendering (messages) and the sinks that deliver them (slack,
alertmanager). On these build the incident engine: its values (model), its pure decisions (incidents), routing and
message planning (routing), the durable outbox's delivery (outbox) and the shell that wires them (engine).

`DeliveryError` lives here because every sink raises it and the outbox classifies it, whatever the target."""

from __future__ import annotations


class DeliveryError(Exception):
    """A notification was not delivered. The message never contains a URL, a token or a webhook secret.

    `permanent` means retrying the same request cannot help (bad token, unknown channel, rejected payload);
    otherwise the outbox retries, no earlier than `retry_after` seconds when the target said so (429)."""

    def __init__(
        self, message: str, *, code: str = "error", retry_after: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code  # a short bounded token: "http_500", "rate_limited", "channel_not_found", "connection"
        self.retry_after = retry_after
        self.permanent = permanent


__all__ = ["DeliveryError"]

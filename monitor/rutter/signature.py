"""Rutter's webhook signature: `X-Rutter-Signature: sha256=` + base64(HMAC-SHA256(raw body, client secret))."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

HEADER = "X-Rutter-Signature"
PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The header value Rutter sends for `body`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return PREFIX + base64.b64encode(digest).decode()


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when `header` is a valid signature of `body` under any of `secrets` (two during a rotation)."""
    if not header or not header.startswith(PREFIX):
        return False
    given = header.encode()
    ok = False
    for secret in secrets:
        # compare against every secret so the time taken does not tell which one matched
        ok |= hmac.compare_digest(given, sign(body, secret).encode())
    return ok

"""A connection state for tests: healthy, ongoing, on SHOPIFY since `at`, with any field changed by keyword."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from monitor.domain import ConnectionState, Health, LifecycleStage


def connection_state(cid: str, at: datetime, **changes: Any) -> ConnectionState:
    base = ConnectionState(
        id=cid,
        platform="SHOPIFY",
        lifecycle_stage=LifecycleStage.ONGOING,
        health=Health.HEALTHY,
        stage_since=at,
        health_since=at,
        first_seen_at=at,
        updated_at=at,
    )
    return replace(base, **changes) if changes else base

"""States for tests: a connection healthy, ongoing, on SHOPIFY since `at`, and a status of it ready with its history
complete; any field changed by keyword."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from monitor.domain import ConnectionState, Health, LifecycleStage, StatusSnapshot


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


def status_snapshot(cid: str, **changes: Any) -> StatusSnapshot:
    base = StatusSnapshot(
        connection_id=cid,
        platform="SHOPIFY",
        is_ready=True,
        needs_update=False,
        is_disabled=False,
        historical_sync_completed=True,
    )
    return replace(base, **changes) if changes else base

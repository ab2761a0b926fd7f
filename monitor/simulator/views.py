"""The JSON Rutter shows of a simulated connection: list items, status, details, webhooks and error bodies.

Shapes follow docs/rutter-api.md §2 and §3 field for field; change them only with that document in hand.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from monitor.simulator.platforms import ENTITIES, SUPPORTED_COUNTS, SYNCED_COUNT_FIELDS, category

if TYPE_CHECKING:
    from monitor.simulator.connection import SimConnection

_ENTITY_NAMESPACE = uuid.UUID("6f1c2f4e-8a53-4d0e-9a43-2b9f1f0c5e71")
_MONTH = timedelta(days=30)


def iso(when: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z and milliseconds, as Rutter writes timestamps."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_body(error_type: str, error_code: str, message: str) -> dict[str, Any]:
    """Rutter's error schema: stable type and code, a human message."""
    return {"error_type": error_type, "error_code": error_code, "error_message": message}


def list_item(conn: SimConnection) -> dict[str, Any]:
    """One item of `GET /connections`, exactly the 2024-08-31 fields."""
    return {
        "id": conn.id,
        "access_token": conn.access_token,
        "link_url": conn.link_url,
        "platform": conn.platform,
        "status": str(conn.list_status),
        "name": conn.name,
        "created_at": iso(conn.created_at),
        "updated_at": iso(conn.updated_at),
    }


def list_item_json(conn: SimConnection) -> bytes:
    """`list_item` serialized by hand (ids and timestamps need no escaping): 100,000 items must be cheap."""
    return (
        f'{{"id":"{conn.id}","access_token":"{conn.access_token}","link_url":"{conn.link_url}",'
        f'"platform":{json.dumps(conn.platform)},"status":"{conn.list_status}","name":{json.dumps(conn.name)},'
        f'"created_at":"{iso(conn.created_at)}","updated_at":"{iso(conn.updated_at)}"}}'
    ).encode()


def _synced(conn: SimConnection) -> int:
    """How many records are synced: the completed share of the merchant's history plus ongoing changes."""
    batches = len(conn.plan)
    if not conn.is_ready:
        done = 0.0
    elif batches <= 1:
        done = 1.0
    else:
        done = (1 + conn.history_done) / batches
    return int(conn.size * done) + conn.entity_events


def _history_status(conn: SimConnection) -> dict[str, Any]:
    cat = category(conn.platform)
    synced = _synced(conn)
    entities = ENTITIES[cat]
    oldest = conn.created_at - conn.plan[-1].months * _MONTH
    total = {
        entity: {
            "oldest_entity_date": iso(oldest) if conn.is_ready else None,
            "newest_entity_date": iso(conn.last_sync_completed_at),
            "ready": conn.is_ready,
            "synced_count": synced // len(entities) + (synced % len(entities) if i == 0 else 0),
        }
        for i, entity in enumerate(entities)
    }
    batched = len(conn.plan) > 1
    completed = (1 + conn.history_done) if conn.is_ready else 0
    batches: list[dict[str, Any]] = []
    if batched:
        covered: dict[str, int] = {}  # months of each entity already synced by earlier batches
        for number, batch in enumerate(conn.plan, start=1):
            if number <= completed:
                state = "COMPLETED"
            elif number == completed + 1:
                state = "IN_PROGRESS"
            else:
                state = "NOT_STARTED"
            progress = {
                entity: {
                    "status": state,
                    "oldest_batch_entity_date": iso(conn.created_at - batch.months * _MONTH),
                    "newest_batch_entity_date": iso(conn.created_at - covered.get(entity, 0) * _MONTH),
                }
                for entity in batch.entities
            }
            for entity in batch.entities:
                covered[entity] = max(covered.get(entity, 0), batch.months)
            batches.append(
                {
                    "batch_num": number,
                    "progress_info": progress,
                    "config": {
                        "timeFrameInMonths": batch.months,
                        "entities": dict.fromkeys(batch.entities, "REQUIRED"),
                    },
                }
            )
    supported = SUPPORTED_COUNTS[cat]
    expected: list[dict[str, Any]] | None = None
    if conn.platform == "QUICKBOOKS":  # 2024-08-31 reports expected counts for QuickBooks only
        expected = [
            {"batch_num": n, "entity": entity, "is_estimate": True, "count": conn.size // len(conn.plan)}
            for n, batch in enumerate(conn.plan, start=1)
            for entity in batch.entities
        ]
    status: dict[str, Any] = {
        "historical_sync_completed": conn.historical_sync_completed,
        "total": total,
        "num_batches_completed": completed if batched else None,
    }
    for name in SYNCED_COUNT_FIELDS:
        status[name] = synced if name in supported else None
    status["expected_entity_counts"] = expected
    status["batches"] = batches
    return status


def status_body(conn: SimConnection, org_id: str) -> dict[str, Any]:
    """`GET /connections/status`: the §2.1 shape."""
    return {
        "connection": {"id": conn.id, "orgId": org_id, "platform": conn.platform},
        "status": {
            "last_sync_completed_at": iso(conn.last_sync_completed_at),
            "is_healthy": conn.is_healthy,
            "is_ready": conn.is_ready,
            "link_url": conn.link_url,
            "platform": conn.platform,
            "created_at": iso(conn.created_at),
            "needs_update_status": {"needs_update": conn.needs_update},
            "disabled_status": {"is_disabled": conn.disabled, "disabled_reason": conn.disabled_reason},
            "historical_sync_status": _history_status(conn),
        },
    }


def details_body(conn: SimConnection) -> dict[str, Any]:
    """`GET /connections/access_token`: "Fetch a Connection"."""
    commerce_orders = "synced_orders_count" in SUPPORTED_COUNTS[category(conn.platform)]
    synced = _synced(conn)
    oldest_order = conn.created_at - conn.plan[-1].months * _MONTH
    estimated = None if conn.is_ready else (conn.ready_due or conn.created_at)
    return {
        "connection": {
            "id": conn.id,
            "store_unique_id": conn.store_unique_id,
            "estimated_completed_at": iso(estimated),
            "last_sync_completed_at": iso(conn.last_sync_completed_at),
            "last_sync_started_at": iso(conn.last_sync_started_at),
            "oldest_order_date": iso(oldest_order) if commerce_orders and conn.is_ready else None,
            "newest_order_date": iso(conn.last_sync_completed_at) if commerce_orders else None,
            "disabled": conn.disabled,
            "link_url": conn.link_url,
            "needs_update": conn.needs_update,
            "platform": conn.platform,
            "initial_orders_synced_count": synced if commerce_orders else None,
            "store_domain": conn.store_domain,
            "store_name": conn.store_name,
            "unavailable_objects": [],
            "created_at": iso(conn.created_at),
        }
    }


def connection_webhook(conn: SimConnection, code: str, **extras: Any) -> dict[str, Any]:
    """A flat `type: CONNECTION` webhook with the code's extras (§3.1)."""
    return {
        "type": "CONNECTION",
        "code": code,
        "connection_id": conn.id,
        "access_token": conn.access_token,
        **extras,
    }


def entity_type(code: str) -> str:
    """ORDER_CREATED -> ORDER, PURCHASE_ORDER_UPDATED -> PURCHASE_ORDER."""
    return code.rsplit("_", 1)[0]


def entity_webhook(conn: SimConnection, code: str, at: datetime, number: int) -> dict[str, Any]:
    """`{type, code, connection_id, access_token, <object>: {...}}`: the envelope customers' code uses."""
    kind = entity_type(code)
    object_id = uuid.uuid5(_ENTITY_NAMESPACE, f"{conn.id}:{number}")
    created = at if code.endswith("_CREATED") else conn.created_at
    body: dict[str, Any] = {
        "id": str(object_id),
        "platform_id": str(100_000 + number),
        "created_at": iso(created),
        "updated_at": iso(at),
        "currency_code": "USD",
        "amount": round(10 + (number * 7.31) % 990, 2),
    }
    if code.endswith("_DELETED"):
        body = {"id": str(object_id), "platform_id": str(100_000 + number)}
    return {
        "type": kind,
        "code": code,
        "connection_id": conn.id,
        "access_token": conn.access_token,
        kind.lower(): body,
    }


def sim_view(conn: SimConnection) -> dict[str, Any]:
    """The simulator's own view of a connection for `/_sim` (tests read ids, tokens and flags from it)."""
    return {
        "id": conn.id,
        "access_token": conn.access_token,
        "platform": conn.platform,
        "name": conn.name,
        "store_name": conn.store_name,
        "status": str(conn.list_status),
        "created_at": iso(conn.created_at),
        "updated_at": iso(conn.updated_at),
        "ready_at": iso(conn.ready_at),
        "is_ready": conn.is_ready,
        "is_healthy": conn.is_healthy,
        "needs_update": conn.needs_update,
        "disabled": conn.disabled,
        "disabled_reason": conn.disabled_reason,
        "history_batches": conn.history_batches,
        "history_batches_done": conn.history_done,
        "historical_sync_completed": conn.historical_sync_completed,
        "last_sync_completed_at": iso(conn.last_sync_completed_at),
        "deleted": conn.deleted,
    }

"""The alerting half of SqlStore: incidents, storms and the durable outbox, on the same SQLAlchemy Core code path
for SQLite and PostgreSQL. Kept apart from monitor.store.sql so that each module stays small; SqlStore inherits it."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from monitor.alerting.messages import SlackMessage
from monitor.alerting.model import (
    Action,
    Attempt,
    Incident,
    NoticeKind,
    OutboxMessage,
    OutboxRow,
    OutboxState,
    Phase,
    Storm,
    Thread,
)
from monitor.alerting.rules import AlertName, Severity
from monitor.domain import Health, LifecycleStage
from monitor.store.tables import incidents, outbox, storms

_PENDING = OutboxState.PENDING.value


class AlertingQueries:
    """Store methods of the incident engine and its outbox. The host class provides `_read`, `_write` (one
    transaction) and `_dialect`."""

    _dialect: str

    def _read(self, operation: str) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    def _write(self, operation: str) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    async def load_alerting(self) -> tuple[list[Incident], list[Storm]]:
        """The open incidents and open storms, to rebuild the engine's book after a restart."""
        open_incidents = sa.select(incidents).where(incidents.c.phase != Phase.RESOLVED.value)
        open_storms = sa.select(storms).where(storms.c.resolved_at.is_(None))
        async with self._read("load alerting") as conn:
            found = (await conn.execute(open_incidents.order_by(incidents.c.detected_at))).mappings().all()
            rolled = (await conn.execute(open_storms.order_by(storms.c.since))).mappings().all()
        return [incident_from_row(row) for row in found], [storm_from_row(row) for row in rolled]

    async def save_alerting(
        self,
        changed: Sequence[Incident],
        changed_storms: Sequence[Storm] = (),
        messages: Sequence[OutboxMessage] = (),
        withdrawn: Sequence[str] = (),
    ) -> None:
        """Upsert incidents and storms, cancel the not yet attempted rows of `withdrawn` groups and enqueue
        `messages`, all in one transaction."""
        if not (changed or changed_storms or messages or withdrawn):
            return
        o = outbox.c
        async with self._write("save alerting") as conn:
            if changed:
                await conn.execute(_upsert(self._dialect, incidents), [incident_row(i) for i in changed])
            if changed_storms:
                await conn.execute(_upsert(self._dialect, storms), [storm_row(s) for s in changed_storms])
            if withdrawn:
                await conn.execute(
                    sa.update(outbox)
                    .where(o.group_key.in_(list(withdrawn)), o.state == _PENDING, o.attempts == 0)
                    .values(state=OutboxState.CANCELLED.value, last_error="withdrawn")
                )
            for message in messages:
                if message.coalesce:
                    await conn.execute(
                        sa.delete(outbox).where(
                            o.group_key == message.group,
                            o.kind == message.kind.value,
                            o.action == message.action.value,
                            o.state == _PENDING,
                            o.attempts == 0,
                        )
                    )
            if messages:
                await conn.execute(sa.insert(outbox), [outbox_row(m) for m in messages])

    async def outbox_heads(self) -> list[OutboxRow]:
        """The oldest pending message of each channel: each channel delivers strictly in order."""
        o = outbox.c
        heads = sa.select(sa.func.min(o.id)).where(o.state == _PENDING).group_by(o.channel).scalar_subquery()
        stmt = sa.select(outbox).where(o.id.in_(heads)).order_by(o.id)
        async with self._read("read outbox") as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [outbox_from_row(row) for row in rows]

    async def outbox_claim(self, row_id: int, at: datetime) -> OutboxRow | None:
        """Count an attempt before it is made (so a crash mid-send is known); None when the row is no longer
        pending. Claiming a firing message also marks its incident attempted: a storm can no longer withdraw it."""
        o = outbox.c
        async with self._write("claim outbox row") as conn:
            row = (await conn.execute(sa.select(outbox).where(o.id == row_id, o.state == _PENDING))).mappings().first()
            if row is None:
                return None
            claimed = outbox_from_row(row)
            await conn.execute(
                sa.update(outbox)
                .where(o.id == row_id)
                .values(attempts=o.attempts + 1, first_attempt_at=sa.func.coalesce(o.first_attempt_at, at))
            )
            if claimed.message.kind is NoticeKind.FIRING:
                await conn.execute(
                    sa.update(incidents).where(incidents.c.key == claimed.message.group).values(attempted=True)
                )
        return claimed

    async def outbox_record(self, row_id: int, attempt: Attempt) -> None:
        """Record an attempt's outcome: sent (with Slack's ts), failed for good, cancelled, or retry later."""
        values: dict[str, Any] = {"state": attempt.state.value, "last_error": attempt.error}
        if attempt.state is OutboxState.PENDING:
            values["next_attempt_at"] = attempt.next_attempt_at or attempt.at
        else:
            values["settled_at"] = attempt.at
        if attempt.ts is not None:
            values["ts"] = attempt.ts
        if attempt.slack_channel is not None:
            values["slack_channel"] = attempt.slack_channel
        async with self._write("record outbox attempt") as conn:
            await conn.execute(sa.update(outbox).where(outbox.c.id == row_id).values(**values))

    async def outbox_thread(self, group: str) -> Thread | None:
        """Where the group's parent message landed, once it was sent in bot mode."""
        o = outbox.c
        stmt = (
            sa.select(o.slack_channel, o.ts)
            .where(
                o.group_key == group,
                o.parent.is_(True),
                o.state == OutboxState.SENT.value,
                o.ts.is_not(None),
                o.slack_channel.is_not(None),
            )
            .order_by(o.id)
            .limit(1)
        )
        async with self._read("read outbox thread") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else Thread(slack_channel=str(row.slack_channel), ts=str(row.ts))

    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        """How many messages wait for delivery, and when the oldest of them was enqueued."""
        o = outbox.c
        pending = o.state == _PENDING
        async with self._read("read outbox backlog") as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(outbox).where(pending))).scalar_one()
            oldest = (await conn.execute(sa.select(sa.func.min(o.created_at)).where(pending))).scalar()
        return int(count), oldest

    async def _prune_alerting(self, conn: AsyncConnection, before: datetime) -> None:
        """Drop resolved incidents and storms and settled outbox rows older than `before` (history retention)."""
        await conn.execute(sa.delete(incidents).where(incidents.c.resolved_at < before))
        await conn.execute(sa.delete(storms).where(storms.c.resolved_at < before))
        await conn.execute(sa.delete(outbox).where(outbox.c.state != _PENDING, outbox.c.created_at < before))


def _upsert(dialect: str, table: sa.Table) -> sa.Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    updated = {col.name: stmt.excluded[col.name] for col in table.c if col.name != "key"}
    return stmt.on_conflict_do_update(index_elements=[table.c.key], set_=updated)


# ---------------------------------------------------------------------------------------------------------------
# Rows <-> values.


def incident_row(i: Incident) -> dict[str, Any]:
    return {
        "key": i.key,
        "connection_id": i.connection_id,
        "platform": i.platform,
        "alert": i.alert.value,
        "severity": i.severity.value,
        "phase": i.phase.value,
        "since": i.since,
        "detected_at": i.detected_at,
        "stage": i.stage.value,
        "health": i.health.value,
        "reason": i.reason,
        "store_name": i.store_name,
        "name": i.name,
        "link_url": i.link_url,
        "cleared_at": i.cleared_at,
        "resolved_at": i.resolved_at,
        "storm_key": i.storm_key,
        "announced": i.announced,
        "announced_reason": i.announced_reason,
        "attempted": i.attempted,
    }


def incident_from_row(row: sa.RowMapping) -> Incident:
    return Incident(
        key=row["key"],
        connection_id=row["connection_id"],
        platform=row["platform"],
        alert=AlertName(row["alert"]),
        severity=Severity(row["severity"]),
        phase=Phase(row["phase"]),
        since=row["since"],
        detected_at=row["detected_at"],
        stage=LifecycleStage(row["stage"]),
        health=Health(row["health"]),
        reason=row["reason"],
        store_name=row["store_name"],
        name=row["name"],
        link_url=row["link_url"],
        cleared_at=row["cleared_at"],
        resolved_at=row["resolved_at"],
        storm_key=row["storm_key"],
        announced=bool(row["announced"]),
        announced_reason=row["announced_reason"],
        attempted=bool(row["attempted"]),
    )


def storm_row(s: Storm) -> dict[str, Any]:
    return {
        "key": s.key,
        "platform": s.platform,
        "alert": s.alert.value,
        "severity": s.severity.value,
        "since": s.since,
        "count": s.count,
        "open_count": s.open_count,
        "level": s.level,
        "examples": list(s.examples),
        "reasons": [[reason, n] for reason, n in s.reasons],
        "last_cleared_at": s.last_cleared_at,
        "resolved_at": s.resolved_at,
    }


def storm_from_row(row: sa.RowMapping) -> Storm:
    return Storm(
        key=row["key"],
        platform=row["platform"],
        alert=AlertName(row["alert"]),
        severity=Severity(row["severity"]),
        since=row["since"],
        count=int(row["count"]),
        open_count=int(row["open_count"]),
        level=int(row["level"]),
        examples=tuple(str(e) for e in row["examples"] or ()),
        reasons=tuple((str(r), int(n)) for r, n in row["reasons"] or ()),
        last_cleared_at=row["last_cleared_at"],
        resolved_at=row["resolved_at"],
    )


def outbox_row(m: OutboxMessage) -> dict[str, Any]:
    return {
        "channel": m.channel,
        "group_key": m.group,
        "kind": m.kind.value,
        "action": m.action.value,
        "parent": m.parent,
        "payload": m.payload.to_dict(),
        "detected_at": m.detected_at,
        "created_at": m.created_at,
        "state": _PENDING,
        "attempts": 0,
        "next_attempt_at": m.created_at,
        "last_error": "",
    }


def outbox_from_row(row: sa.RowMapping) -> OutboxRow:
    return OutboxRow(
        id=int(row["id"]),
        message=OutboxMessage(
            channel=row["channel"],
            group=row["group_key"],
            kind=NoticeKind(row["kind"]),
            action=Action(row["action"]),
            payload=SlackMessage.from_dict(row["payload"]),
            detected_at=row["detected_at"],
            created_at=row["created_at"],
            parent=bool(row["parent"]),
        ),
        attempts=int(row["attempts"]),
        next_attempt_at=row["next_attempt_at"],
        first_attempt_at=row["first_attempt_at"],
        last_error=row["last_error"],
    )

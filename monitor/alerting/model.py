"""Values of the incident engine and its outbox: incidents, storms, the notices the engine decides, and the
messages and delivery attempts the outbox persists. Frozen values only; nothing here does I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from monitor.alerting.messages import IncidentView, SlackMessage, StormView
from monitor.alerting.rules import AlertName, Severity
from monitor.domain import Health, LifecycleStage


class Phase(StrEnum):
    """Where an incident is. A clearing incident is FIRING (or PENDING) with `cleared_at` set."""

    PENDING = "pending"  # the condition holds; not announced yet (group wait)
    FIRING = "firing"  # announced, on its own or rolled up in a storm
    RESOLVED = "resolved"  # over; kept as history


@dataclass(frozen=True, slots=True)
class Incident:
    """One alert condition on one connection, from its detection to its resolve. At most one is open per
    (connection_id, alert). The display fields follow the connection's latest state."""

    key: str
    connection_id: str
    platform: str
    alert: AlertName
    severity: Severity
    phase: Phase
    since: datetime  # when the condition started (the rule's start, not when we noticed)
    detected_at: datetime  # when the engine first saw it: group wait, storm window and delay start here
    stage: LifecycleStage
    health: Health
    reason: str = ""  # the standardized disabled_reason, once known
    store_name: str | None = None
    name: str | None = None
    link_url: str | None = None
    cleared_at: datetime | None = None  # the condition has been clear since then (hold-down running)
    resolved_at: datetime | None = None  # when it ended: the start of the clear spell that lasted
    storm_key: str | None = None  # the storm it was counted in
    announced: bool = False  # it has messages of its own: its resolve is owed
    announced_reason: str = ""  # the reason its messages showed last
    attempted: bool = False  # its firing message went to Slack at least once: it can no longer be withdrawn

    @property
    def open(self) -> bool:
        return self.phase is not Phase.RESOLVED

    @property
    def holding(self) -> bool:
        """The condition holds now (an open incident in hold-down does not)."""
        return self.open and self.cleared_at is None

    @property
    def state(self) -> str:
        """What the API shows: pending, firing, resolving (hold-down) or resolved."""
        if self.open and self.cleared_at is not None:
            return "resolving"
        return self.phase.value

    def view(self) -> IncidentView:
        """What a message shows of this incident."""
        return IncidentView(
            connection_id=self.connection_id,
            platform=self.platform,
            alert=self.alert,
            severity=self.severity,
            stage=self.stage,
            health=self.health,
            since=self.since,
            store_name=self.store_name,
            name=self.name,
            reason=self.reason,
            link_url=self.link_url,
            resolved_at=self.resolved_at,
        )


@dataclass(frozen=True, slots=True)
class Storm:
    """Many connections of one platform firing one alert together: one roll-up instead of their messages."""

    key: str
    platform: str
    alert: AlertName
    severity: Severity
    since: datetime  # when its first member was detected
    count: int  # connections counted in it, resolved ones included
    open_count: int  # members not resolved yet; the storm ends at zero
    level: int  # the last size announced by a doubling: threshold, 2x, 4x, ...
    examples: tuple[str, ...] = ()
    reasons: tuple[tuple[str, int], ...] = ()  # (disabled_reason or "", members), sorted by reason
    last_cleared_at: datetime | None = None  # the latest clear of a member so far
    resolved_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def view(self) -> StormView:
        """What a roll-up message shows of this storm."""
        return StormView(
            platform=self.platform,
            alert=self.alert,
            severity=self.severity,
            count=self.count,
            since=self.since,
            examples=self.examples,
            reasons=dict(self.reasons),
            open_count=None if self.resolved_at is not None else self.open_count,
            resolved_at=self.resolved_at,
        )


class NoticeKind(StrEnum):
    """What the engine decided to tell people; also the `kind` of the outbox rows it becomes."""

    FIRING = "firing"
    FOLLOWUP = "followup"
    RESOLVED = "resolved"
    STORM_FIRING = "storm_firing"
    STORM_UPDATED = "storm_updated"
    STORM_RESOLVED = "storm_resolved"


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to announce, about one incident or one storm, as it stands after the decision."""

    kind: NoticeKind
    detected_at: datetime  # when what it announces was detected (for the delay histogram)
    incident: Incident | None = None
    storm: Storm | None = None
    doubled: bool = False  # a storm update that reached the next doubling

    @property
    def group(self) -> str:
        """The incident's or storm's key: messages of one group are delivered in order, in one thread."""
        if self.incident is not None:
            return self.incident.key
        if self.storm is not None:
            return self.storm.key
        raise ValueError("a notice needs an incident or a storm")


class Action(StrEnum):
    """How a message is delivered. Incoming webhooks and the console can only POST."""

    POST = "post"  # a new top-level message
    REPLY = "reply"  # in the thread of the group's parent (a top-level post when there is none)
    UPDATE = "update"  # chat.update of the group's parent (nothing to do when there is none)


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # refused for good (bad token, unknown channel, rejected payload)
    CANCELLED = "cancelled"  # withdrawn before any attempt (rolled into a storm), or an edit with no parent


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to deliver to one route, persisted with the incidents in one transaction."""

    channel: str  # the route's label: the `channel` metric label and the pacing key, never a URL
    group: str  # incident or storm key
    kind: NoticeKind
    action: Action
    payload: SlackMessage
    detected_at: datetime
    created_at: datetime
    parent: bool = False  # once sent, its ts is the group's thread
    coalesce: bool = False  # replaces a not yet attempted pending row of the same group, kind and action


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A persisted outbox message and its delivery bookkeeping."""

    id: int
    message: OutboxMessage
    attempts: int
    next_attempt_at: datetime
    first_attempt_at: datetime | None = None
    last_error: str = ""  # of the previous attempt; "" after attempts > 0 means it never came back (a crash)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt, as the outbox records it."""

    state: OutboxState  # PENDING means "retry at next_attempt_at"
    at: datetime
    next_attempt_at: datetime | None = None
    error: str = ""  # a short bounded code, never a URL or a token
    ts: str | None = None
    slack_channel: str | None = None


@dataclass(frozen=True, slots=True)
class Thread:
    """Where a group's parent message landed in Slack (bot mode)."""

    slack_channel: str
    ts: str


def reasons_of(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """A storm's reason breakdown as a sorted tuple, zero counts dropped."""
    return tuple(sorted((reason, n) for reason, n in counts.items() if n > 0))

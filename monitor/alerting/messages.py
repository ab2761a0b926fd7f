"""Slack messages for incidents and storms: Block Kit blocks and a plain-text fallback, from pure functions.

The renderer reads frozen views (`IncidentView`, `StormView`), never the store, and no view holds an access
token. Every message names the alert and severity, the connection (id, platform, store name when known), the
stage and health and since when, the disabled reason, and one action to take."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from monitor.alerting.rules import AlertName, Condition, Severity
from monitor.domain import ConnectionState, Health, LifecycleStage

# Unverified: Rutter documents no per-connection dashboard URL. MONITOR_RUTTER_DASHBOARD_URL overrides it.
DEFAULT_DASHBOARD_URL = "https://dashboard.rutter.com/connections/{connection_id}"
MAX_EXAMPLES = 5

ALERT_TITLES: dict[AlertName, str] = {
    AlertName.CONNECTION_DISABLED: "Connection disabled",
    AlertName.CONNECTION_NEEDS_UPDATE: "Connection needs update",
    AlertName.CONNECTION_UNHEALTHY: "Connection unhealthy",
    AlertName.INITIAL_SYNC_STALLED: "Initial sync stalled",
    AlertName.HISTORICAL_SYNC_STALLED: "Historical sync stalled",
    AlertName.SYNC_STALE: "Sync stale",
}

ALERT_MEANINGS: dict[AlertName, str] = {
    AlertName.CONNECTION_DISABLED: "Rutter disabled this connection: nothing syncs and its API calls fail "
    "until the cause is fixed, usually by the merchant.",
    AlertName.CONNECTION_NEEDS_UPDATE: "The merchant revoked access or the platform invalidated it: "
    "the merchant must re-authenticate through the link.",
    AlertName.CONNECTION_UNHEALTHY: "Rutter reports sync errors on this connection and it has not recovered.",
    AlertName.INITIAL_SYNC_STALLED: "The initial sync has not finished: data endpoints still answer PRODUCT_NOT_READY.",
    AlertName.HISTORICAL_SYNC_STALLED: "The historical sync has made no batch progress.",
    AlertName.SYNC_STALE: "No sync has completed and no data has arrived for longer than expected.",
}

_SEVERITY_EMOJI: dict[Severity, str] = {Severity.CRITICAL: ":red_circle:", Severity.WARNING: ":warning:"}
_RESOLVED_EMOJI = ":white_check_mark:"
_INFO_EMOJI = ":information_source:"
_STORM_EMOJI = ":rotating_light:"

# Block Kit limits (Slack rejects the whole message beyond them).
_HEADER_MAX = 150
_FIELD_MAX = 2000
_SECTION_MAX = 3000
_NAME_MAX = 200


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """A rendered message: `text` is the plain-text fallback (notifications); `blocks`, the layout."""

    text: str
    blocks: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload (also what the outbox persists)."""
        return {"text": self.text, "blocks": [dict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlackMessage:
        """Rebuild a message persisted with `to_dict`."""
        return cls(text=str(data["text"]), blocks=tuple(dict(b) for b in data.get("blocks") or ()))


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What a message shows of one incident; built by the incident engine, independent of the store."""

    connection_id: str
    platform: str
    alert: AlertName
    severity: Severity
    stage: LifecycleStage
    health: Health
    since: datetime  # when the condition started
    store_name: str | None = None
    name: str | None = None  # the connection's name in Rutter, shown when no store name is known
    reason: str = ""  # the standardized disabled_reason, or empty
    link_url: str | None = None  # the merchant's re-auth link
    resolved_at: datetime | None = None  # when the condition cleared

    @classmethod
    def of(cls, state: ConnectionState, condition: Condition, *, resolved_at: datetime | None = None) -> IncidentView:
        """The view of `condition` on `state`: names and links from the state, the rest from the condition."""
        return cls(
            connection_id=state.id,
            platform=state.platform,
            alert=condition.alert,
            severity=condition.severity,
            stage=state.lifecycle_stage,
            health=state.health,
            since=condition.since,
            store_name=state.store_name,
            name=state.name,
            reason=condition.reason,
            link_url=state.link_url,
            resolved_at=resolved_at,
        )


@dataclass(frozen=True, slots=True)
class StormView:
    """A roll-up of one alert firing on many connections of one platform."""

    platform: str
    alert: AlertName
    severity: Severity
    count: int  # connections that fired in this storm
    since: datetime  # when the first of them fired
    examples: tuple[str, ...] = ()  # a few connection ids; at most MAX_EXAMPLES are shown
    reasons: Mapping[str, int] = field(default_factory=dict)  # disabled_reason -> connections ("" = none)
    open_count: int | None = None  # how many still fire, when known
    resolved_at: datetime | None = None


def dashboard_link(template: str, connection_id: str) -> str:
    """A connection's Rutter dashboard URL from a `{connection_id}` template (other braces are left alone)."""
    return template.replace("{connection_id}", quote(connection_id, safe=""))


def action_of(view: IncidentView, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> tuple[str, str]:
    """The one action to take, as (label, url): the re-auth link for needs update, else the dashboard."""
    if view.alert is AlertName.CONNECTION_NEEDS_UPDATE and view.link_url:
        return "Send the merchant this re-auth link", view.link_url
    return "Open in the Rutter dashboard", dashboard_link(dashboard_url, view.connection_id)


def humanize_duration(delta: timedelta) -> str:
    """Two most significant units, e.g. `45 s`, `4 min 10 s`, `1 h 5 min`, `2 d 3 h`."""
    total = max(0, int(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    first = next((i for i, (n, _) in enumerate(units) if n), len(units) - 1)
    shown = [f"{n} {unit}" for i, (n, unit) in enumerate(units[first : first + 2]) if n or i == 0]
    return " ".join(shown)


def format_time(at: datetime) -> str:
    """An unambiguous UTC timestamp for people."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_firing(view: IncidentView, *, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> SlackMessage:
    """The one message that announces an incident."""
    title = ALERT_TITLES[view.alert]
    label, url = action_of(view, dashboard_url)
    text = (
        f"[{view.severity.upper()}] {title}: {_who_plain(view)}, {view.stage} / {view.health} since "
        f"{format_time(view.since)}.{_reason_plain(view)} Action: {label}: {url}"
    )
    blocks = [
        HeaderBlock(text=_plain(f"{_SEVERITY_EMOJI[view.severity]} {title}: {_short_name(view)}", _HEADER_MAX)),
        SectionBlock(text=_md(ALERT_MEANINGS[view.alert], _SECTION_MAX), fields=_fields(view)),
        _button(label, url),
        _context(view.alert, view.severity),
    ]
    return SlackMessage(text=text, blocks=_dicts(blocks))


def render_resolved(view: IncidentView, *, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> SlackMessage:
    """The one message (or parent edit) that closes an incident, saying how long it lasted."""
    if view.resolved_at is None:
        raise ValueError("a resolved message needs resolved_at")
    title = ALERT_TITLES[view.alert]
    lasted = humanize_duration(view.resolved_at - view.since)
    window = f"from {format_time(view.since)} to {format_time(view.resolved_at)}"
    text = (
        f"[RESOLVED] {title}: {_who_plain(view)}. Lasted {lasted} ({window}). "
        f"Now {view.stage} / {view.health}."
        f"{_reason_plain(view)}"
    )
    blocks = [
        HeaderBlock(text=_plain(f"{_RESOLVED_EMOJI} Resolved: {title}: {_short_name(view)}", _HEADER_MAX)),
        SectionBlock(text=_md(f"*Lasted {lasted}* ({window}).", _SECTION_MAX), fields=_fields(view)),
        _button("Open in the Rutter dashboard", dashboard_link(dashboard_url, view.connection_id)),
        _context(view.alert, view.severity),
    ]
    return SlackMessage(text=text, blocks=_dicts(blocks))


def render_followup(
    view: IncidentView, *, note: str | None = None, dashboard_url: str = DEFAULT_DASHBOARD_URL
) -> SlackMessage:
    """A short update on an open incident, by default the disabled reason learnt after the firing message."""
    title = ALERT_TITLES[view.alert]
    if note is None:
        note = f"Reason: {view.reason}" if view.reason else "Reason: still not known"
    label, url = action_of(view, dashboard_url)
    text = f"[UPDATE] {title}: {_who_plain(view)}. {note}. Action: {label}: {url}"
    body = f"{_INFO_EMOJI} *Update on {_esc(title)}* for {_who_md(view)}\n{_esc(note)}"
    blocks = [
        SectionBlock(text=_md(body, _SECTION_MAX)),
        _button(label, url),
        _context(view.alert, view.severity),
    ]
    return SlackMessage(text=text, blocks=_dicts(blocks))


def render_storm_firing(storm: StormView, *, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> SlackMessage:
    """The roll-up that replaces the per-connection messages of a storm."""
    return _storm(storm, "Storm", dashboard_url)


def render_storm_updated(storm: StormView, *, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> SlackMessage:
    """The roll-up again as the storm grows (edit or thread reply in bot mode, a new message per doubling)."""
    return _storm(storm, "Storm growing", dashboard_url)


def render_storm_resolved(storm: StormView, *, dashboard_url: str = DEFAULT_DASHBOARD_URL) -> SlackMessage:
    """The roll-up's end, with how long the storm lasted."""
    if storm.resolved_at is None:
        raise ValueError("a resolved storm needs resolved_at")
    return _storm(storm, "Storm over", dashboard_url)


# ------------------------------------------------------------------------------------------------------------


def _storm(storm: StormView, kind: str, dashboard_url: str) -> SlackMessage:
    title = ALERT_TITLES[storm.alert]
    emoji = _RESOLVED_EMOJI if storm.resolved_at is not None else _STORM_EMOJI
    platform = _clip(storm.platform, _NAME_MAX)
    examples = storm.examples[:MAX_EXAMPLES]
    reasons = sorted(storm.reasons.items(), key=lambda item: (-item[1], item[0]))
    if storm.resolved_at is not None:
        lasted = humanize_duration(storm.resolved_at - storm.since)
        status = f"Over after {lasted} ({format_time(storm.since)} to {format_time(storm.resolved_at)})"
    else:
        status = f"Since {format_time(storm.since)}"
        if storm.open_count is not None:
            status += f", {storm.open_count} still firing"
    summary = (
        f"{storm.count} {platform} connections fired {storm.alert} ({storm.severity}). {status}. "
        "Per-connection messages are rolled up here; every incident is listed by the monitor's API."
    )
    example_md = "\n".join(f"<{dashboard_link(dashboard_url, cid)}|`{_esc(cid)}`>" for cid in examples)
    reason_md = "\n".join(f"{_esc(r) if r else '(no reason)'}: {n}" for r, n in reasons)
    fields = [
        _md(f"*Platform*\n{_esc(platform)}"),
        _md(f"*Alert*\n{_esc(title)} (`{storm.alert}`)"),
        _md(f"*Severity*\n{storm.severity}"),
        _md(
            f"*Connections*\n{storm.count}" + (f" ({storm.open_count} firing)" if storm.open_count is not None else "")
        ),
        _md(f"*Examples*\n{example_md or '(none)'}", _FIELD_MAX),
    ]
    if reasons:
        fields.append(_md(f"*By reason*\n{reason_md}", _FIELD_MAX))
    plain_reasons = ", ".join(f"{r or '(no reason)'}: {n}" for r, n in reasons)
    text = (
        f"[{kind.upper()}] {title} on {storm.count} {platform} connections ({storm.severity}). {status}. "
        f"Examples: {', '.join(examples) or '(none)'}." + (f" By reason: {plain_reasons}." if reasons else "")
    )
    blocks = [
        HeaderBlock(text=_plain(f"{emoji} {kind}: {title} on {storm.count} {platform} connections", _HEADER_MAX)),
        SectionBlock(text=_md(_esc(summary), _SECTION_MAX), fields=fields),
        _context(storm.alert, storm.severity),
    ]
    return SlackMessage(text=text, blocks=_dicts(blocks))


def _fields(view: IncidentView) -> list[MarkdownTextObject]:
    fields = [
        _md(f"*Connection*\n`{_esc(view.connection_id)}`"),
        _md(f"*Platform*\n{_esc(view.platform)}"),
    ]
    store = view.store_name or view.name
    if store:
        fields.append(_md(f"*{'Store' if view.store_name else 'Name'}*\n{_esc(_clip(store, _NAME_MAX))}"))
    fields += [
        _md(f"*Severity*\n{view.severity}"),
        _md(f"*Stage*\n{view.stage}"),
        _md(f"*Health*\n{view.health}"),
        _md(f"*Since*\n{format_time(view.since)}"),
    ]
    if view.reason:
        fields.append(_md(f"*Reason*\n`{_esc(view.reason)}`"))
    elif view.alert is AlertName.CONNECTION_DISABLED:
        fields.append(_md("*Reason*\nnot known yet"))
    return fields


def _short_name(view: IncidentView) -> str:
    store = view.store_name or view.name
    return f"{view.platform} {store}" if store else f"{view.platform} {view.connection_id}"


def _who_plain(view: IncidentView) -> str:
    store = view.store_name or view.name
    where = f"{view.platform}, {_clip(store, _NAME_MAX)}" if store else view.platform
    return f"connection {view.connection_id} ({where})"


def _who_md(view: IncidentView) -> str:
    store = view.store_name or view.name
    where = f"{_esc(view.platform)}, {_esc(_clip(store, _NAME_MAX))}" if store else _esc(view.platform)
    return f"connection `{_esc(view.connection_id)}` ({where})"


def _reason_plain(view: IncidentView) -> str:
    if view.reason:
        return f" Reason: {view.reason}."
    if view.alert is AlertName.CONNECTION_DISABLED:
        return " Reason: not known yet."
    return ""


def _button(label: str, url: str) -> ActionsBlock:
    return ActionsBlock(elements=[ButtonElement(text=_clip(label, 75), url=url, action_id="open_action")])


def _context(alert: AlertName, severity: Severity) -> ContextBlock:
    return ContextBlock(elements=[_md(f"rutter-monitor · alert `{alert}` · severity {severity}")])


def _esc(text: str) -> str:
    """Slack mrkdwn control characters; user-supplied names must not become links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md(text: str, limit: int = _FIELD_MAX) -> MarkdownTextObject:
    return MarkdownTextObject(text=_clip(text, limit))


def _plain(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=_clip(text, limit), emoji=True)


def _dicts(blocks: list[Block]) -> tuple[dict[str, Any], ...]:
    return tuple(block.to_dict() for block in blocks)

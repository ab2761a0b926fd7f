"""Routing: which Slack target an incident or a storm goes to, and what messages each kind of target gets.

Routes come from the config file (`[[routes]]`: platforms, an optional connection-name regex, a channel or an
incoming-webhook URL); the default target is SLACK_BOT_TOKEN + SLACK_CHANNEL, else SLACK_WEBHOOK_URL, else the
console in the demo, else none (incidents are still kept, listed by the API, exported and pushed to Alertmanager).
Targets are known here by their label only; the secrets stay with the sinks built by the shell."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from monitor.alerting.messages import (
    DEFAULT_DASHBOARD_URL,
    SlackMessage,
    render_firing,
    render_followup,
    render_resolved,
    render_storm_firing,
    render_storm_resolved,
    render_storm_updated,
)
from monitor.alerting.model import Action, Notice, NoticeKind, OutboxMessage
from monitor.config import Settings

DEFAULT_LABEL = "default"
CONSOLE_LABEL = "console"


class Mode(StrEnum):
    WEBHOOK = "webhook"  # incoming webhook: posts only
    BOT = "bot"  # bot token + channel: threads and edits
    CONSOLE = "console"  # the demo's stdout: posts only


@dataclass(frozen=True, slots=True)
class Target:
    """One place messages go: its label (metric label, pacing key) and what it can do."""

    label: str
    mode: Mode


@dataclass(frozen=True, slots=True)
class Rule:
    """One configured route: connections of `platforms` (any when empty) whose name matches `pattern`."""

    target: Target
    platforms: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def matches(self, platform: str, names: Sequence[str | None]) -> bool:
        if self.platforms and platform.upper() not in self.platforms:
            return False
        if self.pattern is None:
            return True
        return any(name is not None and self.pattern.search(name) for name in names)


class Router:
    """First matching route wins; otherwise the default target (which may be None: no Slack)."""

    def __init__(self, rules: Sequence[Rule] = (), default: Target | None = None) -> None:
        self.rules = tuple(rules)
        self.default = default

    def for_connection(self, platform: str, name: str | None, store_name: str | None) -> Target | None:
        """The target of one connection's messages; a name pattern is tried on its name, then its store name."""
        for rule in self.rules:
            if rule.matches(platform, (name, store_name)):
                return rule.target
        return self.default

    def for_platform(self, platform: str) -> Target | None:
        """The target of a platform's storm roll-ups: routes with a name pattern do not apply to a whole platform."""
        for rule in self.rules:
            if rule.pattern is None and rule.matches(platform, ()):
                return rule.target
        return self.default

    @property
    def targets(self) -> list[Target]:
        """Every distinct target, so the metrics can pre-create their children."""
        found = {rule.target.label: rule.target for rule in self.rules}
        if self.default is not None:
            found.setdefault(self.default.label, self.default)
        return sorted(found.values(), key=lambda t: t.label)


def default_target(settings: Settings, *, console: bool = False) -> Target | None:
    """SLACK_BOT_TOKEN + SLACK_CHANNEL, else SLACK_WEBHOOK_URL, else the console when asked (demo), else none."""
    if settings.slack_bot_token is not None and settings.slack_channel:
        return Target(DEFAULT_LABEL, Mode.BOT)
    if settings.slack_webhook_url is not None:
        return Target(DEFAULT_LABEL, Mode.WEBHOOK)
    if console:
        return Target(CONSOLE_LABEL, Mode.CONSOLE)
    return None


def build_router(settings: Settings, *, console: bool = False) -> Router:
    """The router of the configured routes and default target (call `routing_problems` first)."""
    rules = [
        Rule(
            target=Target(route.label, Mode.BOT if route.slack_channel else Mode.WEBHOOK),
            platforms=frozenset(p.upper() for p in route.platforms),
            pattern=re.compile(route.name_pattern) if route.name_pattern else None,
        )
        for route in settings.routes
    ]
    return Router(rules, default_target(settings, console=console))


def routing_problems(settings: Settings) -> list[str]:
    """What `check-config` reports about routes: channel routes need a bot token; labels must be unique."""
    problems = []
    seen: dict[str, str] = {}
    for n, route in enumerate(settings.routes):
        where = f"ROUTES ({n})"
        if route.slack_channel and settings.slack_bot_token is None:
            problems.append(f"{where}: slack_channel {route.slack_channel!r} needs SLACK_BOT_TOKEN")
        target = route.slack_channel or f"webhook route {n}"
        label = route.label
        if label == DEFAULT_LABEL or (label in seen and seen[label] != target):
            problems.append(f"{where}: route name {label!r} is already used; give the route a distinct `name`")
        seen.setdefault(label, target)
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Notices -> messages, per kind of target.


def plan(
    notice: Notice, target: Target, now: datetime, *, dashboard_url: str = DEFAULT_DASHBOARD_URL
) -> list[OutboxMessage]:
    """The outbox messages of one notice for one target. Webhook and console targets get a new message when an
    incident fires, gets its reason, resolves, and when a storm opens, doubles or ends. A bot target posts the
    parent, threads the rest under it and edits the parent on follow-ups, resolves and storm growth."""
    threaded = target.mode is Mode.BOT
    steps = _steps(notice, threaded, dashboard_url)
    return [
        OutboxMessage(
            channel=target.label,
            group=notice.group,
            kind=notice.kind,
            action=action,
            payload=payload,
            detected_at=notice.detected_at,
            created_at=now,
            parent=notice.kind in _PARENTS and action is Action.POST,
            coalesce=notice.kind is NoticeKind.STORM_UPDATED and action is Action.UPDATE,
        )
        for action, payload in steps
    ]


_PARENTS = frozenset({NoticeKind.FIRING, NoticeKind.STORM_FIRING})


def _steps(notice: Notice, threaded: bool, dashboard_url: str) -> list[tuple[Action, SlackMessage]]:
    kind = notice.kind
    if notice.incident is not None:
        view = notice.incident.view()
        if kind is NoticeKind.FIRING:
            return [(Action.POST, render_firing(view, dashboard_url=dashboard_url))]
        if kind is NoticeKind.FOLLOWUP:
            followup = render_followup(view, dashboard_url=dashboard_url)
            if not threaded:
                return [(Action.POST, followup)]
            return [(Action.REPLY, followup), (Action.UPDATE, render_firing(view, dashboard_url=dashboard_url))]
        if kind is NoticeKind.RESOLVED:
            resolved = render_resolved(view, dashboard_url=dashboard_url)
            if not threaded:
                return [(Action.POST, resolved)]
            return [(Action.UPDATE, resolved), (Action.REPLY, resolved)]
    elif notice.storm is not None:
        storm = notice.storm.view()
        if kind is NoticeKind.STORM_FIRING:
            return [(Action.POST, render_storm_firing(storm, dashboard_url=dashboard_url))]
        if kind is NoticeKind.STORM_UPDATED:
            updated = render_storm_updated(storm, dashboard_url=dashboard_url)
            if not threaded:
                return [(Action.POST, updated)] if notice.doubled else []
            steps = [(Action.UPDATE, updated)]
            return [*steps, (Action.REPLY, updated)] if notice.doubled else steps
        if kind is NoticeKind.STORM_RESOLVED:
            over = render_storm_resolved(storm, dashboard_url=dashboard_url)
            if not threaded:
                return [(Action.POST, over)]
            return [(Action.UPDATE, over), (Action.REPLY, over)]
    raise ValueError(f"no message for a {kind} notice without its subject")

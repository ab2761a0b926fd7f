"""The incident engine's pure core and routing: group wait, criticals at once, hold-down, storms, follow-ups, and
what each kind of Slack target is sent. No I/O: decisions are computed from values and a given time."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.alerting.engine import AlertingConfig
from monitor.alerting.incidents import Book, Decision, EngineSettings, Observation, decide, doubling_level
from monitor.alerting.model import Action, Incident, Notice, NoticeKind, Phase
from monitor.alerting.routing import Mode, Router, Rule, Target, build_router, plan, routing_problems
from monitor.alerting.rules import Thresholds, evaluate
from monitor.config import Settings
from monitor.domain import ConnectionState, Health, LifecycleStage

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
SETTINGS = EngineSettings(
    hold_down=timedelta(minutes=2),
    group_wait=timedelta(seconds=30),
    storm_threshold=10,
    storm_window=timedelta(minutes=5),
)
THRESHOLDS = Thresholds()


def conn(cid: str = "c1", platform: str = "SHOPIFY", **changes: Any) -> ConnectionState:
    """A healthy ongoing connection, fresh at T0, with `changes`."""
    base = ConnectionState(
        id=cid,
        platform=platform,
        lifecycle_stage=LifecycleStage.ONGOING,
        health=Health.HEALTHY,
        stage_since=T0,
        health_since=T0,
        first_seen_at=T0 - timedelta(days=30),
        updated_at=T0,
        last_sync_completed_at=T0,
        store_name=f"Store {cid}",
    )
    return replace(base, **changes)


def disabled(cid: str = "c1", reason: str | None = "SHOP_IS_LOCKED", **changes: Any) -> ConnectionState:
    return conn(cid, health=Health.DISABLED, is_disabled=True, disabled_reason=reason, **changes)


def needs_update(cid: str = "c1", **changes: Any) -> ConnectionState:
    return conn(cid, health=Health.NEEDS_UPDATE, needs_update=True, link_url=f"https://link/{cid}", **changes)


def unhealthy(cid: str, since: datetime, platform: str = "SHOPIFY") -> ConnectionState:
    return conn(cid, platform, health=Health.UNHEALTHY, is_unhealthy=True, health_since=since)


class Core:
    """Runs decide() like the shell does: applies each decision to the book and collects the notices."""

    def __init__(self, settings: EngineSettings = SETTINGS) -> None:
        self.settings = settings
        self.book = Book()
        self.notices: list[Notice] = []
        self._keys = itertools.count(1)

    def step(self, now: datetime, *states: ConnectionState, scan: bool = True) -> Decision:
        observations = [Observation(s, evaluate(s, now, THRESHOLDS)) for s in states]
        decision = decide(
            self.book, observations, now, self.settings, new_key=lambda p: f"{p}-{next(self._keys)}", scan=scan
        )
        self.book.apply(decision)
        self.notices.extend(decision.notices)
        return decision

    def kinds(self) -> list[NoticeKind]:
        return [n.kind for n in self.notices]

    def incident(self, cid: str = "c1") -> Incident:
        (key,) = self.book.by_connection[cid].values()
        return self.book.incidents[key]


def test_a_critical_is_announced_in_the_decision_that_detects_it() -> None:
    """A disable fires at once, without waiting for a scheduled evaluation, and names its reason."""
    core = Core()
    core.step(T0, disabled(), scan=False)
    assert core.kinds() == [NoticeKind.FIRING]
    incident = core.notices[0].incident
    assert incident is not None
    assert (incident.alert, incident.severity, incident.reason) == ("connection_disabled", "critical", "SHOP_IS_LOCKED")
    assert incident.phase is Phase.FIRING
    assert incident.announced


def test_duplicate_observations_change_nothing_and_say_nothing() -> None:
    """The same state observed again (duplicate webhooks, polls, a restart) yields an empty decision."""
    core = Core()
    core.step(T0, disabled())
    for n in range(5):
        assert core.step(T0 + n * S, disabled()).empty
    assert core.kinds() == [NoticeKind.FIRING]


@pytest.mark.parametrize(("after", "announced"), [(29, False), (30, True)])
def test_a_warning_waits_the_group_wait(after: int, announced: bool) -> None:
    """A needs-update warning is announced once the group wait is over, not a second earlier."""
    core = Core()
    core.step(T0, needs_update())
    assert core.kinds() == []
    core.step(T0 + after * S, needs_update())
    assert core.kinds() == ([NoticeKind.FIRING] if announced else [])


def test_flapping_within_the_hold_down_produces_nothing_then_one_resolve() -> None:
    """Clear, back, clear again inside the hold-down: the same incident continues; one resolve at the end."""
    core = Core()
    core.step(T0, disabled())
    key = core.incident().key
    timeline = [
        (60, conn()),  # clears
        (120, disabled()),  # back within 2 min: same incident
        (150, conn()),  # clears again
        (200, disabled()),
        (230, conn()),  # last clear
        (230 + 119, conn()),  # one second before the hold-down ends
    ]
    for offset, state in timeline:
        core.step(T0 + offset * S, state)
        assert core.book.incidents[key].open
    assert core.kinds() == [NoticeKind.FIRING]
    core.step(T0 + (230 + 120) * S, conn())
    assert core.kinds() == [NoticeKind.FIRING, NoticeKind.RESOLVED]
    resolved = core.notices[-1].incident
    assert resolved is not None
    assert resolved.key == key
    assert resolved.resolved_at == T0 + 230 * S  # the start of the clear spell that lasted
    assert key not in core.book.incidents


def test_a_warning_that_clears_during_the_group_wait_is_never_announced() -> None:
    """A pending incident whose condition goes away is dropped after the hold-down without any message."""
    core = Core()
    core.step(T0, needs_update())
    core.step(T0 + 10 * S, conn())
    core.step(T0 + 40 * S, conn())  # the group wait is over, but the condition is clear
    core.step(T0 + 10 * S + SETTINGS.hold_down, conn())
    assert core.kinds() == []
    assert core.book.incidents == {}


def test_a_reason_learnt_later_is_sent_once_as_a_follow_up() -> None:
    """A disable without its reason fires at once; the reason arriving later gives exactly one follow-up."""
    core = Core()
    core.step(T0, disabled(reason=None))
    core.step(T0 + 5 * S, disabled(reason="SHOP_PAYMENT_REQUIRED"))
    core.step(T0 + 6 * S, disabled(reason="SHOP_PAYMENT_REQUIRED"))
    assert core.kinds() == [NoticeKind.FIRING, NoticeKind.FOLLOWUP]
    first, followup = core.notices
    assert first.incident is not None
    assert first.incident.reason == ""
    assert followup.incident is not None
    assert followup.incident.reason == "SHOP_PAYMENT_REQUIRED"


@pytest.mark.parametrize(("connections", "individual", "storms"), [(9, 9, 0), (10, 0, 1), (50, 0, 1)])
def test_storm_threshold(connections: int, individual: int, storms: int) -> None:
    """Below the threshold each warning goes out alone; at the threshold one roll-up replaces them all."""
    core = Core()
    states = [unhealthy(f"c{n:02}", T0 - timedelta(hours=1)) for n in range(connections)]
    for n, state in enumerate(states):  # detected over 50 s, inside the group wait of the first
        core.step(T0 + n * S, state)
    core.step(T0 + 2 * SETTINGS.group_wait + connections * S)
    assert core.kinds().count(NoticeKind.FIRING) == individual
    assert core.kinds().count(NoticeKind.STORM_FIRING) == storms
    if storms:
        storm = next(iter(core.book.storms.values()))
        assert storm.count == connections
        assert all(i.phase is Phase.FIRING and not i.announced for i in core.book.incidents.values())


def test_a_storm_grows_by_doublings_and_resolves_with_its_last_member() -> None:
    """Members joining update the storm (doubled at 20 and 40); the storm ends when its last member resolves."""
    core = Core()
    ids = [f"c{n:02}" for n in range(45)]
    for n, cid in enumerate(ids):
        core.step(T0 + n * S, unhealthy(cid, T0 - timedelta(hours=1)))
    updates = [n for n in core.notices if n.kind is NoticeKind.STORM_UPDATED]
    assert [n.storm.count for n in updates if n.doubled and n.storm] == [20, 40]
    assert len(updates) == 35
    assert core.kinds().count(NoticeKind.STORM_FIRING) == 1
    last = T0 + (60 + 44) * S
    for n, cid in enumerate(ids):
        core.step(T0 + 60 * S + n * S, conn(cid))
    core.step(last + SETTINGS.hold_down)
    assert core.kinds().count(NoticeKind.STORM_RESOLVED) == 1
    over = core.notices[-1].storm
    assert over is not None
    assert over.resolved_at == last
    assert over.count == 45
    assert NoticeKind.RESOLVED not in core.kinds()
    assert core.book.storms == {}


def test_a_critical_storm_withdraws_messages_not_yet_sent() -> None:
    """Criticals go out one by one until the threshold; then the roll-up withdraws those not yet attempted."""
    core = Core()
    for n in range(9):
        core.step(T0 + n * S, disabled(f"c{n}"), scan=False)
    assert core.kinds() == [NoticeKind.FIRING] * 9
    for n in range(4):  # the outbox has handed the first four to Slack
        core.book.mark_attempted(core.incident(f"c{n}").key)
    decision = core.step(T0 + 9 * S, disabled("c9"), scan=False)
    assert [n.kind for n in decision.notices] == [NoticeKind.STORM_FIRING]
    assert sorted(core.book.incidents[k].connection_id for k in decision.withdrawn) == [f"c{n}" for n in range(4, 9)]
    storm = decision.notices[0].storm
    assert storm is not None
    assert storm.count == 10
    assert storm.reasons == (("SHOP_IS_LOCKED", 10),)
    announced = sorted(i.connection_id for i in core.book.incidents.values() if i.announced)
    assert announced == ["c0", "c1", "c2", "c3"]  # they keep their own resolve


def test_storms_are_per_platform_and_alert() -> None:
    """Ten unhealthy connections spread over two platforms are no storm."""
    core = Core()
    for n in range(10):
        platform = "SHOPIFY" if n % 2 else "XERO"
        core.step(T0 + n * S, unhealthy(f"c{n}", T0 - timedelta(hours=1), platform))
    core.step(T0 + timedelta(minutes=1))
    assert core.kinds() == [NoticeKind.FIRING] * 10


def test_detections_outside_the_storm_window_do_not_add_up() -> None:
    """Ten warnings spread over more than the storm window are ten incidents, not a storm."""
    core = Core(replace(SETTINGS, storm_window=timedelta(minutes=1)))
    for n in range(10):
        core.step(T0 + n * 10 * S, unhealthy(f"c{n}", T0 - timedelta(hours=1)))
        core.step(T0 + n * 10 * S + SETTINGS.group_wait)
    assert core.kinds() == [NoticeKind.FIRING] * 10


def test_doubling_levels() -> None:
    """Doublings of a threshold of 10 are 10, 20, 40, 80."""
    assert [doubling_level(n, 10) for n in (10, 19, 20, 39, 40, 80, 100)] == [10, 10, 20, 20, 40, 80, 80]


# -- routing and planning -----------------------------------------------------------------------------------------

WEBHOOK = Target("default", Mode.WEBHOOK)
BOT = Target("#alerts", Mode.BOT)


def notices_of_every_kind() -> dict[NoticeKind, Notice]:
    core = Core()
    core.step(T0, disabled("c0", reason=None))
    core.step(T0 + S, disabled("c0"))
    core.step(T0 + 2 * S, conn("c0"))
    core.step(T0 + 2 * S + SETTINGS.hold_down)
    for n in range(1, 21):
        core.step(T0 + (200 + n) * S, unhealthy(f"s{n}", T0 - timedelta(hours=1)))
    for n in range(1, 21):
        core.step(T0 + 300 * S, conn(f"s{n}"))
    core.step(T0 + 300 * S + SETTINGS.hold_down)
    found: dict[NoticeKind, Notice] = {}
    for notice in core.notices:
        if notice.kind is not NoticeKind.STORM_UPDATED or notice.doubled:
            found.setdefault(notice.kind, notice)
    return found


@pytest.mark.parametrize(
    ("kind", "webhook", "bot"),
    [
        (NoticeKind.FIRING, [Action.POST], [Action.POST]),
        (NoticeKind.FOLLOWUP, [Action.POST], [Action.REPLY, Action.UPDATE]),
        (NoticeKind.RESOLVED, [Action.POST], [Action.UPDATE, Action.REPLY]),
        (NoticeKind.STORM_FIRING, [Action.POST], [Action.POST]),
        (NoticeKind.STORM_UPDATED, [Action.POST], [Action.UPDATE, Action.REPLY]),
        (NoticeKind.STORM_RESOLVED, [Action.POST], [Action.UPDATE, Action.REPLY]),
    ],
)
def test_what_each_target_is_sent(kind: NoticeKind, webhook: list[Action], bot: list[Action]) -> None:
    """Webhooks get new messages only; a bot posts parents, threads the rest and edits the parent."""
    notice = notices_of_every_kind()[kind]
    assert [m.action for m in plan(notice, WEBHOOK, T0)] == webhook
    planned = plan(notice, BOT, T0)
    assert [m.action for m in planned] == bot
    assert all(m.channel == "#alerts" and m.group == notice.group for m in planned)
    assert [m.parent for m in planned] == [kind in {NoticeKind.FIRING, NoticeKind.STORM_FIRING}] + [False] * (
        len(planned) - 1
    )


def test_storm_growth_without_a_doubling_only_edits_in_bot_mode() -> None:
    """A storm growing from 10 to 11 sends nothing to a webhook and one coalescing edit in bot mode."""
    core = Core()
    for n in range(11):
        core.step(T0 + n * S, unhealthy(f"c{n}", T0 - timedelta(hours=1)))
    growth = next(n for n in core.notices if n.kind is NoticeKind.STORM_UPDATED)
    assert plan(growth, WEBHOOK, T0) == []
    (edit,) = plan(growth, BOT, T0)
    assert (edit.action, edit.coalesce) == (Action.UPDATE, True)
    assert "11 SHOPIFY connections" in edit.payload.text


def test_routes_match_platform_then_name_pattern_then_the_default() -> None:
    """The first matching route wins; storms use platform routes without a name pattern."""
    commerce = Target("#commerce", Mode.BOT)
    vip = Target("vip", Mode.WEBHOOK)
    router = Router(
        [
            Rule(vip, pattern=re.compile(r"^VIP ")),
            Rule(commerce, platforms=frozenset({"SHOPIFY", "AMAZON"})),
        ],
        default=WEBHOOK,
    )
    assert router.for_connection("SHOPIFY", None, "Corner Shop") == commerce
    assert router.for_connection("XERO", None, "VIP Books") == vip
    assert router.for_connection("shopify", "VIP x", None) == vip
    assert router.for_connection("XERO", None, None) == WEBHOOK
    assert router.for_platform("AMAZON") == commerce
    assert router.for_platform("XERO") == WEBHOOK
    assert Router([]).for_connection("XERO", None, None) is None


def test_route_problems_are_reported_by_check_config() -> None:
    """A channel route without a bot token, and two different routes under one name, are configuration problems."""
    settings = Settings.model_validate(
        {
            "routes": [
                {"platforms": ["SHOPIFY"], "slack_channel": "#commerce"},
                {"name": "#commerce", "platforms": ["XERO"], "slack_webhook_url": "https://hooks.example/x"},
            ]
        }
    )
    problems = routing_problems(settings)
    assert problems == [
        "ROUTES (0): slack_channel '#commerce' needs SLACK_BOT_TOKEN",
        "ROUTES (1): route name '#commerce' is already used; give the route a distinct `name`",
    ]
    assert "hooks.example" not in " ".join(problems)
    router = build_router(settings.model_copy(update={"routes": settings.routes[:1]}))
    assert router.for_connection("SHOPIFY", None, None) == Target("#commerce", Mode.BOT)
    assert router.default is None


def test_per_platform_thresholds_override_only_what_they_set() -> None:
    """`[alerts.platforms.NETSUITE]` changes NETSUITE's initial sync threshold and keeps every other default."""
    settings = Settings.model_validate(
        {"alerts": {"platforms": {"netsuite": {"initial_sync_stall_after": "24h"}}}, "monitor_sync_stale_after": "4h"}
    )
    policy = AlertingConfig.of(settings).policy
    assert policy.for_platform("NETSUITE").initial_sync_stall_after == timedelta(hours=24)
    assert policy.for_platform("NETSUITE").sync_stale_after == timedelta(hours=4)
    assert policy.for_platform("SHOPIFY").initial_sync_stall_after == timedelta(hours=6)

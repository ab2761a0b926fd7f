"""The durable outbox against the local fake Slack (real slack_sdk) and a real SQLite file: pacing, Retry-After,
backoff, order, restarts, permanent failures, threads, and the bot-mode check that avoids re-sending."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from monitor.alerting.messages import SlackMessage
from monitor.alerting.model import Action, NoticeKind, OutboxMessage
from monitor.alerting.outbox import BotChannel, Channel, Delivery, PlainChannel
from monitor.alerting.slack import SlackBotSink, SlackWebhookSink
from monitor.clock import FakeClock
from monitor.metrics import Metrics
from monitor.store.sql import SqlStore, open_store
from tests.fakeslack import DEFAULT_TOKEN, FakeSlack


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def slack(clock: FakeClock) -> AsyncIterator[FakeSlack]:
    async with FakeSlack(clock=clock) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/outbox.db"


@pytest.fixture
async def store(db_url: str, clock: FakeClock) -> AsyncIterator[SqlStore]:
    opened = await open_store(db_url, clock=clock)
    yield opened
    await opened.close()


def message(
    text: str,
    *,
    channel: str = "default",
    group: str = "i-1",
    kind: NoticeKind = NoticeKind.FIRING,
    action: Action = Action.POST,
    clock: FakeClock,
) -> OutboxMessage:
    now = clock.now()
    return OutboxMessage(
        channel=channel,
        group=group,
        kind=kind,
        action=action,
        payload=SlackMessage(text=text),
        detected_at=now,
        created_at=now,
        parent=kind is NoticeKind.FIRING and action is Action.POST,
        coalesce=kind is NoticeKind.STORM_UPDATED and action is Action.UPDATE,
    )


def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def counted(m: Metrics, channel: str, outcome: str) -> float:
    return (
        m.registry.get_sample_value("rutter_monitor_notifications_total", {"channel": channel, "outcome": outcome}) or 0
    )


def webhook(slack: FakeSlack, session: aiohttp.ClientSession, name: str = "default") -> Channel:
    return PlainChannel(SlackWebhookSink(slack.webhook_url_for(name), session=session))


def bot(slack: FakeSlack, session: aiohttp.ClientSession, channel: str = "#alerts") -> Channel:
    return BotChannel(SlackBotSink(DEFAULT_TOKEN, channel, base_url=slack.api_url, session=session))


async def test_one_message_per_second_per_channel_in_order(
    store: SqlStore, slack: FakeSlack, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Two routes deliver side by side, each strictly in order and at most one message per second."""
    m = metrics()
    a = [message(f"a{n}", channel="a", group=f"i-a{n}", clock=clock) for n in range(3)]
    b = [message(f"b{n}", channel="b", group=f"i-b{n}", clock=clock) for n in range(2)]
    await store.save_alerting([], [], [a[0], b[0], a[1], a[2], b[1]])
    delivery = Delivery(store, clock, m, {"a": webhook(slack, session, "a"), "b": webhook(slack, session, "b")})
    assert await delivery.deliver_due() == 2
    assert await delivery.deliver_due() == 0
    await clock.advance(0.999)
    assert await delivery.deliver_due() == 0
    await clock.advance(0.001)
    assert await delivery.deliver_due() == 2
    await clock.advance(1)
    assert await delivery.deliver_due() == 1
    assert [msg.text for msg in slack.parents("webhook:a")] == ["a0", "a1", "a2"]
    assert [msg.text for msg in slack.parents("webhook:b")] == ["b0", "b1"]
    assert counted(m, "a", "sent") == 3
    assert m.registry.get_sample_value("rutter_monitor_notification_delay_seconds_count") == 5
    assert await store.outbox_backlog() == (0, None)


@pytest.mark.parametrize("mode", ["webhook", "bot"])
async def test_outage_then_rate_limit_then_ok_loses_nothing_across_a_restart(
    mode: str, db_url: str, slack: FakeSlack, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """500s, then a 429 with Retry-After, with a restart in the middle: every message arrives once, in order."""
    texts = ["fire 1", "fire 2", "resolve 1", "fire 3", "resolve 2"]
    groups = ["i-1", "i-2", "i-1", "i-3", "i-2"]
    store = await open_store(db_url, clock=clock)
    await store.save_alerting([], [], [message(t, group=g, clock=clock) for t, g in zip(texts, groups, strict=True)])
    channel = webhook(slack, session) if mode == "webhook" else bot(slack, session)
    m = metrics()
    slack.fail(500, times=3)
    slack.fail(429, retry_after=7)
    delivery = Delivery(store, clock, m, {"default": channel})
    for _ in range(2):  # two 500s: backoff of 1 s, then 2 s
        assert await delivery.deliver_due() == 1
        await clock.advance(4)
    await store.close()  # the daemon stops with everything still in the outbox

    store = await open_store(db_url, clock=clock)
    assert (await store.outbox_backlog())[0] == 5
    delivery = Delivery(store, clock, m, {"default": channel})
    assert await delivery.deliver_due() == 1  # the third 500
    await clock.advance(4)
    assert await delivery.deliver_due() == 1  # 429, Retry-After: 7
    requests = len(slack.requests)
    await clock.advance(6)
    assert await delivery.deliver_due() == 0
    assert len(slack.requests) == requests
    await clock.advance(1)
    for _ in range(10):
        await delivery.deliver_due()
        await clock.advance(1)
    await store.close()
    assert [msg.text for msg in slack.messages] == texts
    assert (counted(m, "default", "retried"), counted(m, "default", "rate_limited")) == (3, 1)
    assert counted(m, "default", "sent") == 5
    assert slack.calls("conversations.history") == []  # an HTTP error answer proves the message was not taken


async def test_bot_mode_records_instead_of_resending_what_reached_slack_before_a_crash(
    store: SqlStore, slack: FakeSlack, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """An attempt that reached Slack but was never recorded is found by its metadata and not posted again."""
    await store.save_alerting([], [], [message("parent", clock=clock)])
    channel = bot(slack, session)
    (head,) = await store.outbox_heads()
    claimed = await store.outbox_claim(head.id, clock.now())  # the attempt is counted, then the process dies
    assert claimed is not None
    await channel.send(claimed, None)  # ... after Slack accepted the message
    await clock.advance(60)
    delivery = Delivery(store, clock, metrics(), {"default": channel})
    assert await delivery.deliver_due() == 1
    assert len(slack.calls("chat.postMessage")) == 1
    assert len(slack.calls("conversations.history")) == 1
    thread = await store.outbox_thread("i-1")
    assert thread is not None
    assert thread.ts == slack.messages[0].ts
    assert await store.outbox_backlog() == (0, None)


async def test_a_permanent_refusal_is_failed_and_the_next_message_goes(
    store: SqlStore, slack: FakeSlack, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A payload Slack refuses for good is marked failed and counted; the channel moves on to the next one."""
    m = metrics()
    await store.save_alerting(
        [], [], [message("bad", group="i-1", clock=clock), message("good", group="i-2", clock=clock)]
    )
    slack.fail(400, error="invalid_blocks")
    delivery = Delivery(store, clock, m, {"default": webhook(slack, session)})
    await delivery.deliver_due()
    await clock.advance(1)
    await delivery.deliver_due()
    assert [msg.text for msg in slack.messages] == ["good"]
    assert (counted(m, "default", "failed"), counted(m, "default", "sent")) == (1, 1)


async def test_thread_messages_follow_their_parent(
    store: SqlStore, slack: FakeSlack, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A reply waits for its parent (retried after a 500), then lands in its thread; an edit updates it."""
    await store.save_alerting(
        [],
        [],
        [
            message("firing", clock=clock),
            message("reason", kind=NoticeKind.FOLLOWUP, action=Action.REPLY, clock=clock),
            message("resolved", kind=NoticeKind.RESOLVED, action=Action.UPDATE, clock=clock),
        ],
    )
    slack.fail(500, path="/api/chat.postMessage")
    delivery = Delivery(store, clock, metrics(), {"default": bot(slack, session)})
    for _ in range(6):
        await delivery.deliver_due()
        await clock.advance(1)
    (parent,) = slack.parents("#alerts")
    assert [r.text for r in slack.replies(parent.ts)] == ["reason"]
    assert parent.text == "resolved"
    assert [text for text, _ in parent.edits] == ["firing"]


async def test_an_edit_without_a_parent_is_dropped_and_a_reply_becomes_a_post(
    store: SqlStore, slack: FakeSlack, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """When the parent never made it (refused), the reply is posted on its own and the edit is skipped."""
    await store.save_alerting(
        [],
        [],
        [
            message("firing", clock=clock),
            message("resolved", kind=NoticeKind.RESOLVED, action=Action.UPDATE, clock=clock),
            message("resolved", kind=NoticeKind.RESOLVED, action=Action.REPLY, clock=clock),
        ],
    )
    slack.fail(400, error="invalid_blocks")
    delivery = Delivery(store, clock, metrics(), {"default": bot(slack, session)})
    for _ in range(4):
        await delivery.deliver_due()
        await clock.advance(1)
    assert [(msg.text, msg.thread_ts) for msg in slack.messages] == [("resolved", None)]
    assert slack.calls("chat.update") == []


async def test_withdrawn_and_coalesced_rows(store: SqlStore, clock: FakeClock) -> None:
    """A withdrawn group's unattempted rows are cancelled; a newer storm edit replaces the one still waiting."""
    first = message("storm 11", group="s-1", kind=NoticeKind.STORM_UPDATED, action=Action.UPDATE, clock=clock)
    await store.save_alerting([], [], [message("fire", group="i-9", clock=clock), first])
    second = message("storm 12", group="s-1", kind=NoticeKind.STORM_UPDATED, action=Action.UPDATE, clock=clock)
    await store.save_alerting([], [], [second], withdrawn=["i-9"])
    heads = await store.outbox_heads()
    assert [h.message.payload.text for h in heads] == ["storm 12"]
    assert await store.outbox_backlog() == (1, clock.now())


async def test_outbox_rows_survive_a_prune_while_pending(store: SqlStore, clock: FakeClock) -> None:
    """Retention never drops a message that still waits for delivery."""
    await store.save_alerting([], [], [message("late", clock=clock)])
    await clock.advance(timedelta(days=400).total_seconds())
    await store.prune(clock.now(), clock.now())
    assert (await store.outbox_backlog())[0] == 1

"""Slack messages and the two Slack sinks, with the real slack_sdk talking to the local fake Slack."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from monitor.alerting import DeliveryError
from monitor.alerting.messages import (
    IncidentView,
    SlackMessage,
    StormView,
    dashboard_link,
    humanize_duration,
    render_firing,
    render_followup,
    render_resolved,
    render_storm_firing,
    render_storm_resolved,
    render_storm_updated,
)
from monitor.alerting.rules import AlertName, Severity, Thresholds, evaluate
from monitor.alerting.slack import ConsoleSink, Delivered, SlackBotSink, SlackWebhookSink
from monitor.domain import ConnectionState, Health, LifecycleStage
from tests.fakeslack import DEFAULT_TOKEN, FakeSlack

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONN = "0b7c1c4e-5a1d-4a8e-9d36-6f1f2f9b7d10"
TOKEN = "3c5e8a2b-access-token-never-shown"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


def disabled_state(**changes: Any) -> ConnectionState:
    base: dict[str, Any] = {
        "id": CONN,
        "platform": "SHOPIFY",
        "lifecycle_stage": LifecycleStage.ONGOING,
        "health": Health.DISABLED,
        "stage_since": T0 - timedelta(days=3),
        "health_since": T0,
        "first_seen_at": T0 - timedelta(days=3),
        "updated_at": T0,
        "access_token": TOKEN,
        "store_name": "Acme Outdoor",
        "link_url": f"https://link.rutterapi.com/connection/{CONN}",
        "disabled_reason": "SHOP_PAYMENT_REQUIRED",
        "is_disabled": True,
    }
    base.update(changes)
    return ConnectionState(**base)


def view(**changes: Any) -> IncidentView:
    base: dict[str, Any] = {
        "connection_id": CONN,
        "platform": "SHOPIFY",
        "alert": AlertName.CONNECTION_DISABLED,
        "severity": Severity.CRITICAL,
        "stage": LifecycleStage.ONGOING,
        "health": Health.DISABLED,
        "since": T0,
        "store_name": "Acme Outdoor",
        "reason": "SHOP_PAYMENT_REQUIRED",
        "link_url": f"https://link.rutterapi.com/connection/{CONN}",
    }
    base.update(changes)
    return IncidentView(**base)


def block_text(message: SlackMessage) -> str:
    """Every string inside the blocks, joined (what a reader of the Block Kit layout sees)."""
    return json.dumps(message.to_dict()["blocks"], ensure_ascii=False)


def mrkdwn_texts(node: Any) -> list[str]:
    """The text of every mrkdwn object in a block tree (where Slack interprets links and mentions)."""
    if isinstance(node, list):
        return [text for item in node for text in mrkdwn_texts(item)]
    if not isinstance(node, dict):
        return []
    own = [node["text"]] if node.get("type") == "mrkdwn" else []
    return own + [text for value in node.values() for text in mrkdwn_texts(value)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- rendering -----------------------------------------------------------------------------------------------


def test_firing_message_names_everything_the_reader_needs() -> None:
    """A disable message names alert, severity, connection, platform, store, stage, health, since, reason."""
    state = disabled_state()
    (condition,) = evaluate(state, T0, Thresholds())
    message = render_firing(IncidentView.of(state, condition))
    for shown in (message.text, block_text(message)):
        for expected in (
            "Connection disabled",
            CONN,
            "SHOPIFY",
            "Acme Outdoor",
            "ongoing",
            "disabled",
            "2026-01-01 12:00:00 UTC",
            "SHOP_PAYMENT_REQUIRED",
            f"https://dashboard.rutter.com/connections/{CONN}",
        ):
            assert expected in shown, (expected, shown)
    assert "CRITICAL" in message.text
    assert message.blocks[0]["type"] == "header"
    assert TOKEN not in json.dumps(message.to_dict())


def test_needs_update_action_is_the_reauth_link() -> None:
    """A needs-update message's one action is the merchant's re-auth link, not the dashboard."""
    link = f"https://link.rutterapi.com/connection/{CONN}"
    message = render_firing(
        view(
            alert=AlertName.CONNECTION_NEEDS_UPDATE,
            severity=Severity.WARNING,
            health=Health.NEEDS_UPDATE,
            reason="",
        )
    )
    buttons = [b for b in message.blocks if b["type"] == "actions"]
    assert [e["url"] for e in buttons[0]["elements"]] == [link]
    assert link in message.text
    assert "dashboard.rutter.com" not in json.dumps(message.to_dict())


def test_dashboard_template_is_configurable() -> None:
    """The dashboard link comes from a template with `{connection_id}`, the id URL-quoted."""
    message = render_firing(view(), dashboard_url="https://ops.example/rutter?c={connection_id}&x={other}")
    assert f"https://ops.example/rutter?c={CONN}&x={{other}}" in message.text
    assert dashboard_link("https://d/{connection_id}", "a/b c") == "https://d/a%2Fb%20c"


def test_disable_without_reason_says_it_is_not_known_yet() -> None:
    """A disable whose reason is not known yet says so, and the follow-up carries the reason."""
    first = render_firing(view(reason=""))
    assert "not known yet" in first.text
    follow = render_followup(view(reason="SHOP_IS_LOCKED"))
    assert all(part in follow.text for part in ("SHOP_IS_LOCKED", CONN, "SHOPIFY"))
    assert "SHOP_IS_LOCKED" in block_text(follow)


def test_resolved_message_says_how_long_it_lasted() -> None:
    """A resolve names the connection and how long the incident lasted."""
    message = render_resolved(view(resolved_at=T0 + timedelta(hours=2, minutes=5), health=Health.HEALTHY))
    assert all(part in message.text for part in ("RESOLVED", CONN))
    assert "Lasted 2 h 5 min" in message.text
    assert "Lasted 2 h 5 min" in block_text(message)
    with pytest.raises(ValueError, match="resolved_at"):
        render_resolved(view())


def test_names_are_escaped_for_mrkdwn() -> None:
    """A store name cannot inject mentions or links into the Block Kit text."""
    message = render_firing(view(store_name="<!channel> & <https://evil|x>"))
    markdown = "\n".join(mrkdwn_texts(message.to_dict()["blocks"]))
    assert "<!channel>" not in markdown
    assert "&lt;!channel&gt; &amp; &lt;https://evil|x&gt;" in markdown


def test_storm_rolls_up_count_examples_and_reasons() -> None:
    """A storm message gives platform, alert, count, at most five examples and the breakdown by reason."""
    ids = tuple(f"conn-{n}" for n in range(8))
    storm = StormView(
        platform="SHOPIFY",
        alert=AlertName.CONNECTION_DISABLED,
        severity=Severity.CRITICAL,
        count=37,
        since=T0,
        examples=ids,
        reasons={"SHOP_IS_LOCKED": 10, "SHOP_PAYMENT_REQUIRED": 20, "": 7},
    )
    message = render_storm_firing(storm)
    for shown in (message.text, block_text(message)):
        assert all(part in shown for part in ("37", "SHOPIFY", "Connection disabled"))
        assert all(cid in shown for cid in ids[:5])
        assert not any(cid in shown for cid in ids[5:])
    assert "By reason: SHOP_PAYMENT_REQUIRED: 20, SHOP_IS_LOCKED: 10, (no reason): 7." in message.text
    grown = render_storm_updated(StormView(**{**_storm_fields(storm), "count": 50, "open_count": 44}))
    assert all(part in grown.text for part in ("50", "44 still firing", "GROWING"))
    over = render_storm_resolved(StormView(**{**_storm_fields(storm), "resolved_at": T0 + timedelta(minutes=42)}))
    assert all(part in over.text for part in ("STORM OVER", "42 min"))


def _storm_fields(storm: StormView) -> dict[str, Any]:
    return {name: getattr(storm, name) for name in StormView.__dataclass_fields__}


def test_message_survives_a_json_round_trip() -> None:
    """A rendered message persisted as JSON (the outbox) comes back identical."""
    message = render_firing(view())
    assert SlackMessage.from_dict(json.loads(json.dumps(message.to_dict()))) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (45, "45 s"), (250, "4 min 10 s"), (3600, "1 h"), (3905, "1 h 5 min"), (183600, "2 d 3 h")],
)
def test_durations_read_like_people_write_them(seconds: int, text: str) -> None:
    """Durations show their two most significant units."""
    assert humanize_duration(timedelta(seconds=seconds)) == text


# -- incoming webhook ----------------------------------------------------------------------------------------


async def test_webhook_posts_blocks_and_fallback_text(slack: FakeSlack) -> None:
    """An incoming-webhook post delivers the Block Kit blocks with the plain-text fallback."""
    message = render_firing(view())
    delivered = await SlackWebhookSink(slack.webhook_url).post(message)
    assert delivered == Delivered(ts=None, channel=None)
    (posted,) = slack.messages
    assert (posted.channel, posted.via, posted.text) == ("webhook:default", "webhook", message.text)
    assert posted.blocks == message.to_dict()["blocks"]
    (request,) = slack.requests
    assert request.headers["Content-Type"].startswith("application/json")


async def test_webhook_outage_is_one_attempt_per_call_then_delivered_once(slack: FakeSlack) -> None:
    """500s are retryable, a 429 carries Retry-After, and once Slack recovers the message arrives once."""
    slack.fail(500, times=2)
    slack.fail(429, retry_after=7)
    sink = SlackWebhookSink(slack.webhook_url)
    errors: list[DeliveryError] = []
    for _ in range(3):
        with pytest.raises(DeliveryError) as caught:
            await sink.post(render_firing(view()))
        errors.append(caught.value)
    await sink.post(render_firing(view()))

    assert [(e.permanent, e.retry_after, e.code) for e in errors] == [
        (False, None, "internal_error"),
        (False, None, "internal_error"),
        (False, 7.0, "rate_limited"),
    ]
    assert len(slack.requests) == 4  # slack_sdk's own retries are off: the outbox owns them
    assert len(slack.messages) == 1
    assert all("services" not in str(e) and slack.url not in str(e) for e in errors)


@pytest.mark.parametrize(("status", "body"), [(404, "no_service"), (403, "action_prohibited"), (410, None)])
async def test_webhook_refusal_is_permanent(slack: FakeSlack, status: int, body: str | None) -> None:
    """A 4xx other than 429 from an incoming webhook is permanent: retrying cannot help."""
    slack.fail(status, error=body)
    with pytest.raises(DeliveryError) as caught:
        await SlackWebhookSink(slack.webhook_url).post(render_firing(view()))
    assert caught.value.permanent
    assert caught.value.code == (body or "invalid")
    assert "services" not in str(caught.value)


async def test_unreachable_slack_is_retryable_and_hides_the_url() -> None:
    """A connection error is retryable and its message never carries the webhook URL."""
    url = f"http://127.0.0.1:{free_port()}/services/T0/B0/secret-part"
    with pytest.raises(DeliveryError) as caught:
        await SlackWebhookSink(url, timeout=2).post(render_firing(view()))
    assert (caught.value.permanent, caught.value.code) == (False, "connection")
    assert not any(part in str(caught.value) for part in ("secret-part", "127.0.0.1"))


async def test_sdk_debug_logging_never_shows_the_webhook_url(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with logging at DEBUG, slack_sdk does not log the (secret) webhook URL."""
    caplog.set_level(logging.DEBUG)
    await SlackWebhookSink(slack.webhook_url).post(render_firing(view()))
    assert "services" not in caplog.text


# -- bot token -----------------------------------------------------------------------------------------------


def bot(slack: FakeSlack, *, token: str = DEFAULT_TOKEN, channel: str = "#alerts") -> SlackBotSink:
    return SlackBotSink(token, channel, base_url=slack.api_url)


async def test_bot_posts_threads_and_edits_the_parent(slack: FakeSlack) -> None:
    """Bot mode posts the parent, threads an update under it and edits the parent on resolve."""
    sink = bot(slack)
    metadata = {"event_type": "rutter_monitor_notification", "event_payload": {"key": "incident-1:firing"}}
    parent = await sink.post(render_firing(view()), metadata=metadata)
    assert parent.channel == "C0ALERTS01"
    assert parent.ts is not None
    reply = await sink.post(render_followup(view()), thread_ts=parent.ts)
    resolved = render_resolved(view(resolved_at=T0 + timedelta(hours=1)))
    edited = await sink.update(parent.channel, parent.ts, resolved)

    assert edited == Delivered(ts=parent.ts, channel="C0ALERTS01")
    assert [m.ts for m in slack.parents("#alerts")] == [parent.ts]
    assert [m.ts for m in slack.replies(parent.ts)] == [reply.ts]
    first = slack.message(parent.ts)
    assert first.text == resolved.text
    assert len(first.edits) == 1
    assert first.metadata == metadata
    post = slack.calls("chat.postMessage")[0]
    assert post.headers["Authorization"] == f"Bearer {DEFAULT_TOKEN}"
    assert (post.param("channel"), post.param("unfurl_links")) == ("#alerts", False)


async def test_find_by_metadata_sees_a_message_sent_before_a_crash(slack: FakeSlack) -> None:
    """After a restart, a fresh sink finds a message by its metadata key, resolving the channel name."""
    metadata = {"event_type": "rutter_monitor_notification", "event_payload": {"key": "incident-7:firing"}}
    sent = await bot(slack).post(render_firing(view()), metadata=metadata)
    since = datetime.fromtimestamp(float(sent.ts or 0), UTC) - timedelta(minutes=5)

    fresh = bot(slack)  # a new process: knows only "#alerts"
    found = await fresh.find_by_metadata("rutter_monitor_notification", "incident-7:firing", since)
    assert found == sent.ts
    assert fresh.channel_id == "C0ALERTS01"
    assert await fresh.find_by_metadata("rutter_monitor_notification", "incident-8:firing", since) is None
    assert await fresh.find_by_metadata("other_type", "incident-7:firing", since) is None
    later = datetime.fromtimestamp(float(sent.ts or 0), UTC) + timedelta(seconds=1)
    assert await fresh.find_by_metadata("rutter_monitor_notification", "incident-7:firing", later) is None
    assert len(slack.calls("conversations.list")) == 1


async def test_find_by_metadata_in_a_thread(slack: FakeSlack) -> None:
    """A threaded update is found among the replies of its parent."""
    sink = bot(slack, channel="C0ALERTS01")
    parent = await sink.post(render_firing(view()))
    assert parent.ts is not None
    kind = "rutter_monitor_notification"
    update = {"event_type": kind, "event_payload": {"key": "incident-1:reason"}}
    reply = await sink.post(render_followup(view()), thread_ts=parent.ts, metadata=update)
    since = T0 - timedelta(days=1)
    assert await sink.find_by_metadata(kind, "incident-1:reason", since) is None
    found = await sink.find_by_metadata(kind, "incident-1:reason", since, thread_ts=parent.ts)
    assert found == reply.ts
    assert slack.calls("conversations.list") == []


async def test_find_by_metadata_pages_through_history(slack: FakeSlack) -> None:
    """The history search follows Slack's cursor past the first page."""
    sink = bot(slack, channel="C0ALERTS01")
    first = await sink.post(render_firing(view()), metadata={"event_type": "e", "event_payload": {"key": "old"}})
    for _ in range(201):
        await sink.post(SlackMessage(text="filler"))
    found = await sink.find_by_metadata("e", "old", T0 - timedelta(days=1))
    assert found == first.ts
    assert len(slack.calls("conversations.history")) == 2


@pytest.mark.parametrize(
    ("setup", "code", "permanent", "retry_after"),
    [
        ({"status": 500}, "internal_error", False, None),
        ({"status": 503, "error": "service_unavailable"}, "service_unavailable", False, None),
        ({"status": 429, "retry_after": 30}, "rate_limited", False, 30.0),
        ({"status": 200, "error": "channel_not_found"}, "channel_not_found", True, None),
        ({"status": 200, "error": "internal_error"}, "internal_error", False, None),
        ({"status": 400, "error": "invalid_blocks"}, "invalid_blocks", True, None),
    ],
)
async def test_bot_errors_are_classified(
    slack: FakeSlack, setup: dict[str, Any], code: str, permanent: bool, retry_after: float | None
) -> None:
    """Each Slack failure becomes a DeliveryError saying whether to retry and when."""
    slack.fail(**setup)
    with pytest.raises(DeliveryError) as caught:
        await bot(slack).post(render_firing(view()))
    assert (caught.value.code, caught.value.permanent, caught.value.retry_after) == (
        code,
        permanent,
        retry_after,
    )
    assert DEFAULT_TOKEN not in str(caught.value)
    assert slack.messages == []


async def test_bad_token_is_permanent_and_never_shown(slack: FakeSlack) -> None:
    """A wrong bot token is a permanent invalid_auth error whose message does not contain the token."""
    with pytest.raises(DeliveryError) as caught:
        await bot(slack, token="xoxb-wrong-secret").post(render_firing(view()))
    assert (caught.value.code, caught.value.permanent) == ("invalid_auth", True)
    assert "xoxb-wrong-secret" not in str(caught.value)


async def test_unknown_channel_and_message_are_permanent(slack: FakeSlack) -> None:
    """Posting to an unknown channel, editing an unknown message or searching one fails permanently."""
    with pytest.raises(DeliveryError) as posting:
        await bot(slack, channel="#nowhere").post(render_firing(view()))
    with pytest.raises(DeliveryError) as editing:
        await bot(slack).update("C0ALERTS01", "1.000001", render_firing(view()))
    with pytest.raises(DeliveryError) as searching:
        await bot(slack, channel="#nowhere").find_by_metadata("e", "k", T0)
    assert (posting.value.code, posting.value.permanent) == ("channel_not_found", True)
    assert (editing.value.code, editing.value.permanent) == ("message_not_found", True)
    assert (searching.value.code, searching.value.permanent) == ("channel_not_found", True)


async def test_rate_limit_is_logged_without_secrets(slack: FakeSlack) -> None:
    """A 429 is logged as a structured event with its Retry-After, and nothing secret."""
    slack.fail(429, retry_after=3)
    with capture_logs() as logs, pytest.raises(DeliveryError):
        await bot(slack).post(render_firing(view()))
    assert {"event": "slack rate limited", "method": "chat.postMessage", "retry_after": 3.0}.items() <= logs[0].items()
    assert DEFAULT_TOKEN not in repr(logs)


async def test_console_sink_prints_the_fallback_text() -> None:
    """Without a Slack target the demo prints each message's plain text."""
    out = io.StringIO()
    message = render_firing(view())
    assert await ConsoleSink(out).post(message) == Delivered(ts=None, channel="console")
    assert out.getvalue() == f"[slack] {message.text}\n"

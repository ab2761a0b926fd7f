"""The Alertmanager sink against a real `prometheus-alertmanager` process: alerts appear, then end."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from monitor.alerting import DeliveryError
from monitor.alerting.alertmanager import AlertmanagerSink, AmAlert
from monitor.alerting.messages import IncidentView
from monitor.alerting.rules import AlertName, Severity
from monitor.domain import Health, LifecycleStage
from tests.alertmanager import active_alerts
from tests.harness import free_port

CONN = "6a0f3e2c-8f7e-4b55-9a51-3f8f8d0c2b11"


def incident(since: datetime) -> IncidentView:
    return IncidentView(
        connection_id=CONN,
        platform="SHOPIFY",
        alert=AlertName.CONNECTION_DISABLED,
        severity=Severity.CRITICAL,
        stage=LifecycleStage.ONGOING,
        health=Health.DISABLED,
        since=since,
        store_name="Acme Outdoor",
        reason="SHOP_PAYMENT_REQUIRED",
    )


@pytest.mark.prometheus
async def test_alert_appears_with_its_labels_then_ends(alertmanager: str, session: aiohttp.ClientSession) -> None:
    """A pushed incident is active in Alertmanager with our labels, and posting endsAt makes it inactive."""
    sink = AlertmanagerSink(session, alertmanager)
    started = datetime.now(UTC) - timedelta(minutes=10)  # Alertmanager runs on the wall clock
    await sink.push([AmAlert.of(incident(started))])

    (alert,) = await active_alerts(session, alertmanager)
    assert alert["labels"] == {
        "alertname": "RutterConnectionDisabled",
        "severity": "critical",
        "platform": "SHOPIFY",
        "connection_id": CONN,
    }
    assert CONN in alert["annotations"]["summary"]
    assert "SHOP_PAYMENT_REQUIRED" in alert["annotations"]["description"]
    assert alert["annotations"]["action_url"] == f"https://dashboard.rutter.com/connections/{CONN}"

    await sink.push([AmAlert.of(incident(started), ends_at=datetime.now(UTC))])
    assert await active_alerts(session, alertmanager) == []


@pytest.mark.prometheus
async def test_resending_a_firing_alert_keeps_one_alert(alertmanager: str, session: aiohttp.ClientSession) -> None:
    """Re-posting a firing alert every resend interval updates it instead of adding another."""
    sink = AlertmanagerSink(session, alertmanager)
    started = datetime.now(UTC) - timedelta(minutes=1)
    first = AmAlert.of(incident(started))
    await sink.push([first])
    await sink.push([replace(first, description="reason learnt later")])
    (alert,) = await active_alerts(session, alertmanager)
    assert alert["annotations"]["description"] == "reason learnt later"


@pytest.mark.prometheus
async def test_wrong_path_is_a_permanent_failure(alertmanager: str, session: aiohttp.ClientSession) -> None:
    """A 4xx from Alertmanager (here a wrong base path) is permanent: retrying cannot help."""
    sink = AlertmanagerSink(session, f"{alertmanager}/not-here")
    with pytest.raises(DeliveryError) as caught:
        await sink.push([AmAlert.of(incident(datetime.now(UTC)))])
    assert (caught.value.permanent, caught.value.code) == (True, "http_404")


async def test_unreachable_alertmanager_is_retryable(session: aiohttp.ClientSession) -> None:
    """A connection error is retryable, and its message does not carry the URL's credentials."""
    sink = AlertmanagerSink(session, f"http://user:hunter2@127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(DeliveryError) as caught:
        await sink.push([AmAlert.of(incident(datetime.now(UTC)))])
    assert (caught.value.permanent, caught.value.code) == (False, "connection")
    assert "hunter2" not in str(caught.value)


async def test_nothing_to_push_sends_nothing(session: aiohttp.ClientSession) -> None:
    """An empty batch makes no request at all (the URL here would refuse one)."""
    await AlertmanagerSink(session, f"http://127.0.0.1:{free_port()}").push([])


def test_postable_alert_shape() -> None:
    """The JSON is a postableAlert: four labels, annotations, RFC 3339 UTC times, endsAt only if set."""
    since = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    alert = AmAlert.of(incident(since), ends_at=since + timedelta(hours=2), generator_url="http://monitor/api")
    body = alert.to_json()
    assert body["labels"] == {
        "alertname": "RutterConnectionDisabled",
        "severity": "critical",
        "platform": "SHOPIFY",
        "connection_id": CONN,
    }
    assert (body["startsAt"], body["endsAt"]) == ("2026-01-01T12:00:00.000Z", "2026-01-01T14:00:00.000Z")
    assert body["generatorURL"] == "http://monitor/api"
    assert set(body["annotations"]) == {"summary", "description", "action_url", "reason"}
    assert "endsAt" not in AmAlert.of(incident(since)).to_json()


def test_invalid_times_are_refused() -> None:
    """An alert cannot end before it starts, and naive times are refused rather than guessed."""
    since = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="end before"):
        AmAlert.of(incident(since), ends_at=since - timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone"):
        AmAlert.of(incident(since.replace(tzinfo=None))).to_json()

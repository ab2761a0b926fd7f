"""The Alertmanager sink against a real `prometheus-alertmanager` process: alerts appear, then end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from monitor.alerting import DeliveryError
from monitor.alerting.alertmanager import AlertmanagerSink, AmAlert
from monitor.alerting.messages import IncidentView
from monitor.alerting.rules import AlertName, Severity
from monitor.domain import Health, LifecycleStage
from tests.tools import require_tool

CONN = "6a0f3e2c-8f7e-4b55-9a51-3f8f8d0c2b11"

AM_CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


@dataclass(frozen=True, slots=True)
class AmProcess:
    binary: str
    args: list[str]
    url: str
    log: IO[bytes]
    log_path: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def am_process(tmp_path: Path) -> Iterator[AmProcess]:
    """Config, storage and log file for one Alertmanager on a free port."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = tmp_path / "am.yml"
    config.write_text(AM_CONFIG)
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    args = [
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with log_path.open("wb") as log:
        yield AmProcess(binary, args, f"http://127.0.0.1:{port}", log, log_path)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def alertmanager(am_process: AmProcess, session: aiohttp.ClientSession) -> AsyncIterator[str]:
    """A running Alertmanager's base URL; the process is stopped by its PID at teardown."""
    proc = await asyncio.create_subprocess_exec(
        am_process.binary, *am_process.args, stdout=am_process.log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        await _wait_ready(session, am_process, proc)
        yield am_process.url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(session: aiohttp.ClientSession, am: AmProcess, proc: asyncio.subprocess.Process) -> None:
    """Poll /-/ready (Alertmanager is up in well under a second) until it answers 200."""
    async with asyncio.timeout(15):
        while True:
            if proc.returncode is not None:
                pytest.fail(f"alertmanager exited: {am.log_path.read_text(errors='replace')[-2000:]}")
            try:
                async with session.get(f"{am.url}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)  # waiting for a process to start, not for time to pass


async def active_alerts(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/api/v2/alerts", params={"active": "true"}) as response:
        assert response.status == 200
        alerts: list[dict[str, Any]] = await response.json()
    return alerts


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

"""The log line format: JSON objects with an ISO 8601 UTC timestamp to the microsecond."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from monitor import log as log_module
from monitor.log import Stamper, render_json, webhook_line


def ns(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000


def stamp(at_ns: int) -> str:
    return str(Stamper(lambda: at_ns)(None, "info", {})["timestamp"])


def test_timestamps_are_iso_utc_to_the_microsecond_with_a_z() -> None:
    """Microseconds are always written, even when zero, so every line's timestamp has the same width."""
    second = ns(datetime(2026, 11, 28, 14, 5, 9, tzinfo=UTC))
    assert stamp(second) == "2026-11-28T14:05:09.000000Z"
    assert stamp(second + 250_000_000) == "2026-11-28T14:05:09.250000Z"
    assert stamp(second + 999_999_999) == "2026-11-28T14:05:09.999999Z"


def test_the_cached_second_moves_on_with_the_clock() -> None:
    """The formatted second is reused within a second and redone for the next one, across a day boundary too."""
    start = ns(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    times = iter([start + ms * 1_000_000 for ms in (100, 900, 1000, 1500)])
    stamper = Stamper(lambda: next(times))
    stamps = [stamper(None, "info", {})["timestamp"] for _ in range(4)]
    assert stamps == [
        "2026-12-31T23:59:59.100000Z",
        "2026-12-31T23:59:59.900000Z",
        "2027-01-01T00:00:00.000000Z",
        "2027-01-01T00:00:00.500000Z",
    ]


def test_a_value_json_cannot_hold_is_written_as_its_repr() -> None:
    """A path in a log call does not lose the line."""
    line = render_json(None, "info", {"event": "x", "path": Path("state/a"), "n": 3})
    assert json.loads(line) == {"event": "x", "path": repr(Path("state/a")), "n": 3}


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., io.StringIO]]:
    """`monitor.log.configure` writing to a buffer with the clock stopped; structlog and logging put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(log_module._STAMPER, "_now_ns", lambda: NOW_NS)

    def configure(**kwargs: Any) -> io.StringIO:
        buffer = io.StringIO()
        monkeypatch.setattr(sys, "stderr", buffer)
        log_module.configure(**kwargs)
        return buffer

    try:
        yield configure
    finally:
        structlog.reset_defaults()
        log_module._fast = None
        root.handlers[:] = handlers
        root.setLevel(level)


NOW_NS = ns(datetime(2026, 11, 28, 14, 5, 9, tzinfo=UTC)) + 123_456_789
CASES = [
    ("webhook accepted", "ORDER_CREATED", "8d1c6a8e-0000-4000-8000-000000000001"),
    ("webhook duplicate", "CONNECTION_DISABLED", None),
    ("webhook accepted", 'A "QUOTED" CODE \u2603', "line\nbreak"),
]


def both(buffer: io.StringIO, event: str, code: str, cid: str | None) -> tuple[str, str]:
    """What structlog's logger writes for the event, then what webhook_line writes."""
    structlog.get_logger().info(event, code=code, connection_id=cid)
    first = buffer.getvalue()
    webhook_line(event, code, cid)
    return first, buffer.getvalue()[len(first) :]


@pytest.mark.parametrize(("event", "code", "cid"), CASES)
def test_the_webhook_line_is_byte_for_byte_structlogs(
    configured: Callable[..., io.StringIO], monkeypatch: pytest.MonkeyPatch, event: str, code: str, cid: str | None
) -> None:
    """Under the JSON chain the line is built without structlog (its logger is not even called) and is the same
    bytes structlog writes, newline included."""
    buffer = configured(json=True)
    theirs = structlog.get_logger()
    monkeypatch.setattr(log_module, "_log", None)  # the fast path must not need it
    monkeypatch.setattr(structlog, "get_logger", lambda: theirs)
    ours_and_theirs = both(buffer, event, code, cid)
    assert ours_and_theirs[0] == ours_and_theirs[1]
    assert json.loads(ours_and_theirs[1]) == {
        "code": code,
        "connection_id": cid,
        "event": event,
        "level": "info",
        "timestamp": "2026-11-28T14:05:09.123456Z",
    }


def test_a_bound_context_variable_is_in_the_webhook_line_too(configured: Callable[..., io.StringIO]) -> None:
    buffer = configured(json=True)
    with structlog.contextvars.bound_contextvars(request_id="r-1"):
        theirs, ours = both(buffer, *CASES[0])
    assert ours == theirs
    assert json.loads(ours)["request_id"] == "r-1"


def test_the_webhook_line_is_captured_by_capture_logs(configured: Callable[..., io.StringIO]) -> None:
    """A test's capture_logs swaps the chain in place: the line goes to it, not to the file."""
    buffer = configured(json=True)
    with structlog.testing.capture_logs() as captured:
        webhook_line("webhook accepted", "ORDER_CREATED", "c-1")
    assert captured == [
        {"event": "webhook accepted", "code": "ORDER_CREATED", "connection_id": "c-1", "log_level": "info"}
    ]
    assert buffer.getvalue() == ""
    webhook_line("webhook accepted", "ORDER_CREATED", "c-1")  # and after it, the file again
    assert json.loads(buffer.getvalue())["connection_id"] == "c-1"


def test_the_webhook_line_follows_the_level_and_the_console(configured: Callable[..., io.StringIO]) -> None:
    """Above info nothing is written; on a console the line is the console renderer's, as structlog's is."""
    buffer = configured(json=True, level="warning")
    webhook_line("webhook accepted", "ORDER_CREATED", "c-1")
    assert buffer.getvalue() == ""
    buffer = configured(json=False)
    theirs, ours = both(buffer, *CASES[0])
    assert "webhook accepted" in ours
    assert not ours.startswith("{")
    assert ours.split(" ", 1)[1] == theirs.split(" ", 1)[1]  # the console's own timestamp comes first

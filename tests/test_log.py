"""The log line format: JSON objects with an ISO 8601 UTC timestamp to the microsecond."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from monitor.log import Stamper, render_json


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

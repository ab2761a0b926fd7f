"""What the simulator served, and the sliding 10-second window both its rate limit and its statistics use."""

from __future__ import annotations

from collections import Counter, deque
from datetime import datetime, timedelta
from typing import Any

WINDOW_SECONDS = 10.0


class SlidingWindow:
    """Times of recent events; the window ending at t holds the events in (t - seconds, t]."""

    def __init__(self, seconds: float = WINDOW_SECONDS) -> None:
        self._span = timedelta(seconds=seconds)
        self._times: deque[datetime] = deque()

    def count(self, now: datetime) -> int:
        """Events in the window ending now."""
        horizon = now - self._span
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def add(self, now: datetime) -> int:
        """Record one event now; the window's count including it."""
        count = self.count(now) + 1
        self._times.append(now)
        return count

    def clear(self) -> None:
        """Forget every event."""
        self._times.clear()


class RequestStats:
    """Counts of every API request (429s and 401s too), and the most seen in any sliding 10 s window."""

    def __init__(self) -> None:
        self._window = SlidingWindow()
        self.total = 0
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.by_endpoint_status: Counter[tuple[str, int]] = Counter()
        self.rate_limited = 0
        self.max_in_window = 0

    def record(self, endpoint: str, status: int, at: datetime) -> None:
        """Count one served request."""
        self.total += 1
        self.by_endpoint[endpoint] += 1
        self.by_status[status] += 1
        self.by_endpoint_status[(endpoint, status)] += 1
        if status == 429:
            self.rate_limited += 1
        self.max_in_window = max(self.max_in_window, self._window.add(at))

    def reset(self) -> None:
        """Start counting afresh (e.g. after a warm-up)."""
        self._window.clear()
        self.total = 0
        self.by_endpoint.clear()
        self.by_status.clear()
        self.by_endpoint_status.clear()
        self.rate_limited = 0
        self.max_in_window = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON served at `GET /_sim/stats`."""
        return {
            "total": self.total,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": {str(status): n for status, n in self.by_status.items()},
            "by_endpoint_status": {
                f"{endpoint} {status}": n for (endpoint, status), n in self.by_endpoint_status.items()
            },
            "rate_limited": self.rate_limited,
            "max_in_window": self.max_in_window,
            "window_seconds": WINDOW_SECONDS,
        }

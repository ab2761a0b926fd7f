"""The monitor's share of Rutter's rate limit (500 requests per 10 s per organization, shared with the
customer's own application). A strict sliding window, not a token bucket: a bucket refilled at
limit/window lets up to twice the limit through across a window edge, which is exactly when Rutter
answers 429."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import datetime, timedelta

import structlog

from monitor.clock import Clock

log = structlog.get_logger()


class SlidingWindowLimiter:
    """No sliding window of `window` seconds ever holds more than `limit` acquisitions.

    Windows are half-open: an acquisition at t and one at t + window are in different windows. Waiters are
    served first come, first served; the one at the head of the queue sleeps on the clock until the oldest
    acquisition of the last `limit` leaves the window."""

    def __init__(self, limit: int, window: float = 10.0, *, clock: Clock) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self._limit = limit
        self._window = timedelta(seconds=window)
        self._clock = clock
        self._granted: deque[datetime] = deque()  # times of the last `limit` acquisitions, oldest first
        self._turn = asyncio.Lock()  # FIFO: asyncio.Lock wakes its waiters in arrival order

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window(self) -> float:
        return self._window.total_seconds()

    def __repr__(self) -> str:
        return f"SlidingWindowLimiter(limit={self._limit}, window={self.window})"

    async def acquire(self) -> None:
        """Wait until one more request fits in the window, then count it; callers go in arrival order."""
        async with self._turn:
            while True:
                now = self._clock.now()
                self._expire(now)
                if len(self._granted) < self._limit:
                    self._granted.append(now)
                    return
                wait = (self._granted[0] + self._window - now).total_seconds()
                log.debug("rate budget exhausted", wait_seconds=round(wait, 3), limit=self._limit)
                await self._clock.sleep(wait)

    def used_ratio(self) -> float:
        """Requests in the window ending now, over the limit: 1.0 means the next caller waits."""
        self._expire(self._clock.now())
        return len(self._granted) / self._limit

    def _expire(self, now: datetime) -> None:
        if self._granted and self._granted[-1] > now:
            # the wall clock went back: count what was granted as granted now, which errs on the safe side
            self._granted = deque(now for _ in self._granted)
        horizon = now - self._window
        while self._granted and self._granted[0] <= horizon:
            self._granted.popleft()

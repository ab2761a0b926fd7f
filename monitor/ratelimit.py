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


RESERVED_SHARE = 0.2  # of the limit, kept from background requests for the ones that detect and explain changes


class SlidingWindowLimiter:
    """No sliding window of `window` seconds ever holds more than `limit` acquisitions.

    Windows are half-open: an acquisition at t and one at t + window are in different windows. Background
    acquisitions (status refreshes) may fill the window only up to `limit - reserved`, so the inventory and
    webhook-triggered fetches never queue behind a full tick of refreshes; they may use the whole limit. Each
    class is served first come, first served; the head of a queue sleeps on the clock until enough of the
    acquisitions in the window have left it."""

    def __init__(self, limit: int, window: float = 10.0, *, clock: Clock, reserved: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self._limit = limit
        self._reserved = int(limit * RESERVED_SHARE) if reserved is None else reserved
        if not 0 <= self._reserved < limit:
            raise ValueError("reserved must be at least 0 and below the limit")
        self._window = timedelta(seconds=window)
        self._clock = clock
        self._granted: deque[datetime] = deque()  # times of the last `limit` acquisitions, oldest first
        self._turns = (asyncio.Lock(), asyncio.Lock())  # FIFO per class: asyncio.Lock wakes in arrival order
        self._queued = [0, 0]  # callers of each class not yet granted

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window(self) -> float:
        return self._window.total_seconds()

    def __repr__(self) -> str:
        return f"SlidingWindowLimiter(limit={self._limit}, window={self.window})"

    async def acquire(self, *, background: bool = False) -> None:
        """Wait until one more request fits in the window (a background one: under `limit - reserved`), then
        count it; callers of a class go in arrival order."""
        cap = self._cap(background)
        self._queued[background] += 1
        try:
            async with self._turns[background]:
                while True:
                    now = self._clock.now()
                    self._expire(now)
                    if len(self._granted) < cap:
                        self._granted.append(now)
                        return
                    # room under the cap once the grant `cap` places from the newest leaves the window
                    wait = (self._granted[len(self._granted) - cap] + self._window - now).total_seconds()
                    log.debug("rate budget exhausted", wait_seconds=round(wait, 3), limit=cap)
                    await self._clock.sleep(wait)
        finally:
            self._queued[background] -= 1

    def delay(self, ahead: int = 0, *, background: bool = False) -> float:
        """Seconds until one more acquisition of this class would be granted, behind the callers already waiting
        and `ahead` more about to ask; 0.0 if at once. Exact unless the other class takes room meanwhile (then it
        is a lower bound): the schedule the waiters will get is played out."""
        now = self._clock.now()
        self._expire(now)
        cap = self._cap(background)
        if len(self._granted) + self._queued[background] + ahead < cap:
            return 0.0  # room for all of them in the window as it is
        window = self.window
        granted = deque((at - now).total_seconds() for at in self._granted)  # seconds from now, oldest first
        t = 0.0
        for _ in range(self._queued[background] + ahead + 1):
            while granted and granted[0] + window <= t:
                granted.popleft()
            if len(granted) >= cap:
                t = granted[len(granted) - cap] + window
                while granted and granted[0] + window <= t:
                    granted.popleft()
            granted.append(t)
        return t

    def _cap(self, background: bool) -> int:
        return self._limit - self._reserved if background else self._limit

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

"""The rate budget: a strict sliding window, first come first served, driven by a FakeClock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.clock import FakeClock
from monitor.ratelimit import SlidingWindowLimiter

STEP = 0.25  # every time in these tests is a multiple of a quarter second, exact in datetime arithmetic


async def drain() -> None:
    """Let every runnable task run (no time passes on any clock)."""
    for _ in range(50):
        await asyncio.sleep(0)


def assert_strict(times: list[float], limit: int, window: float) -> None:
    """No half-open window [t, t + window) holds more than `limit` of `times`."""
    ordered = sorted(times)
    for first, later in zip(ordered, ordered[limit:], strict=False):
        assert later - first >= window, (ordered, limit, window)


class Recorder:
    """Runs acquirers as tasks and records, in seconds from the start, when each was let through."""

    def __init__(self, limiter: SlidingWindowLimiter, clock: FakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.start = clock.now()
        self.granted: dict[int, float] = {}
        self.order: list[int] = []
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, key: int) -> asyncio.Task[None]:
        task = asyncio.create_task(self._one(key))
        self.tasks.append(task)
        return task

    async def _one(self, key: int) -> None:
        await self.limiter.acquire()
        self.granted[key] = (self.clock.now() - self.start).total_seconds()
        self.order.append(key)


async def test_up_to_limit_pass_at_once_then_the_next_waits_a_full_window() -> None:
    """The first `limit` acquisitions are immediate; the next one waits until the oldest leaves the window."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 10.0, clock=clock)
    rec = Recorder(limiter, clock)
    for key in range(4):
        rec.spawn(key)
    await drain()
    assert rec.granted == {0: 0.0, 1: 0.0, 2: 0.0}
    await clock.advance(9.75)
    await drain()
    assert 3 not in rec.granted
    await clock.advance(0.25)
    await drain()
    assert rec.granted[3] == 10.0
    await asyncio.gather(*rec.tasks)


async def test_no_burst_across_the_window_edge() -> None:
    """Unlike a token bucket, grants spread over a window leave no room for a second burst at its edge."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(4, 10.0, clock=clock)
    rec = Recorder(limiter, clock)
    rec.spawn(0)  # t=0
    await drain()
    await clock.advance(9.0)
    for key in range(1, 8):  # a burst of 7 at t=9: 3 fit, 1 more at t=10, 3 more at t=19
        rec.spawn(key)
    await drain()
    for _ in range(int(15 / STEP)):
        await clock.advance(STEP)
        await drain()
    assert [rec.granted[k] for k in range(8)] == [0.0, 9.0, 9.0, 9.0, 10.0, 19.0, 19.0, 19.0]
    assert_strict(list(rec.granted.values()), 4, 10.0)
    await asyncio.gather(*rec.tasks)


async def test_concurrent_waiters_are_served_in_arrival_order_within_the_budget() -> None:
    """Under concurrency every window holds at most `limit` grants and waiters go first come, first served."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 10.0, clock=clock)
    rec = Recorder(limiter, clock)
    for key in range(23):
        rec.spawn(key)
    await drain()
    for _ in range(int(45 / STEP)):
        await clock.advance(STEP)
        await drain()
    assert rec.order == list(range(23))
    assert [rec.granted[k] for k in range(23)] == [10.0 * (k // 5) for k in range(23)]
    assert_strict(list(rec.granted.values()), 5, 10.0)
    await asyncio.gather(*rec.tasks)


async def test_a_cancelled_waiter_takes_no_slot_and_blocks_no_one() -> None:
    """Cancelling a queued acquirer frees its place; those behind it are served as if it never came."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 10.0, clock=clock)
    rec = Recorder(limiter, clock)
    rec.spawn(0)
    sleeper = rec.spawn(1)
    rec.spawn(2)
    await drain()
    sleeper.cancel()
    await drain()
    await clock.advance(10.0)
    await drain()
    assert rec.granted == {0: 0.0, 2: 10.0}
    await asyncio.gather(*rec.tasks, return_exceptions=True)
    assert sleeper.cancelled()


async def test_delay_predicts_when_the_next_acquirers_are_let_through() -> None:
    """delay(ahead=k), asked before anyone waits, is when the (k+1)-th new acquirer is granted; a waiter counts as
    one ahead until it is granted or cancelled."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 10.0, clock=clock)
    rec = Recorder(limiter, clock)
    assert limiter.delay() == 0.0
    rec.spawn(0)
    rec.spawn(1)
    await drain()
    await clock.advance(2.5)
    assert limiter.delay() == 0.0
    assert limiter.delay(ahead=1) == 7.5  # the two grants of 0.0 leave at 10.0
    rec.spawn(2)
    await drain()
    predicted = [limiter.delay(ahead=k) for k in range(4)]
    assert predicted == [7.5, 7.5, 10.0, 17.5]  # the 4th waits for a grant made at 10.0 to leave
    for key in (3, 4, 5):
        rec.spawn(key)
    await drain()
    assert limiter.delay() == predicted[3]  # three wait ahead now
    rec.tasks[-1].cancel()
    await drain()
    assert limiter.delay() == predicted[2]
    await clock.advance(7.5)
    await drain()
    await clock.advance(2.5)
    await drain()
    assert rec.granted == {0: 0.0, 1: 0.0, 2: 2.5, 3: 10.0, 4: 10.0}
    assert [rec.granted[k] - 2.5 for k in (3, 4)] == predicted[:2]
    await asyncio.gather(*rec.tasks, return_exceptions=True)


async def test_delay_of_background_requests_counts_the_reserve() -> None:
    """A background request waits once limit - reserved are in the window; a foreground one not yet."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 10.0, clock=clock, reserved=2)
    for _ in range(3):
        await limiter.acquire(background=True)
    assert limiter.delay() == 0.0
    assert limiter.delay(ahead=1) == 0.0
    assert limiter.delay(ahead=2) == 10.0
    assert limiter.delay(background=True) == 10.0


async def test_used_ratio_counts_only_the_current_window() -> None:
    """used_ratio is grants in the window ending now over the limit, and falls back as grants age out."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(4, 10.0, clock=clock)
    assert limiter.limit == 4
    assert limiter.used_ratio() == 0.0
    await limiter.acquire()
    await clock.advance(5.0)
    await limiter.acquire()
    await limiter.acquire()
    assert limiter.used_ratio() == 0.75
    await clock.advance(5.0)  # the first grant is exactly one window old: out
    assert limiter.used_ratio() == 0.5
    await clock.advance(5.0)
    assert limiter.used_ratio() == 0.0


async def test_a_clock_that_goes_back_never_lets_more_through() -> None:
    """When the wall clock jumps back, earlier grants still count: the budget stays conservative."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 10.0, clock=clock)
    await limiter.acquire()
    await limiter.acquire()
    clock.set(clock.now() - timedelta(hours=1))
    rec = Recorder(limiter, clock)
    rec.spawn(0)
    await drain()
    assert rec.granted == {}
    await clock.advance(10.0)
    await drain()
    assert rec.granted == {0: 10.0}
    assert limiter.used_ratio() == 0.5


@pytest.mark.parametrize(("limit", "window"), [(0, 10.0), (5, 0.0), (5, -1.0)])
def test_nonsense_budgets_are_refused(limit: int, window: float) -> None:
    """A limit below 1 or a window that is not positive is a configuration error, not a hang."""
    with pytest.raises(ValueError, match="must be"):
        SlidingWindowLimiter(limit, window, clock=FakeClock())


def expected_grants(arrivals: list[int], limit: int, window: int) -> list[int]:
    """The earliest FIFO schedule a strict sliding window allows, in STEP units."""
    grants: list[int] = []
    for i, arrival in enumerate(arrivals):
        at = arrival
        if grants:
            at = max(at, grants[-1])
        if i >= limit:
            at = max(at, grants[i - limit] + window)
        grants.append(at)
    return grants


async def run_schedule(arrivals: list[int], limit: int, window: int) -> tuple[list[float], list[float]]:
    """When each arrival was granted, and when `delay()`, asked just before it arrived, said it would be."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(limit, window * STEP, clock=clock)
    rec = Recorder(limiter, clock)
    model = expected_grants(arrivals, limit, window)
    moments = sorted(set(arrivals) | set(model))
    predicted: dict[int, float] = {}
    now = 0
    for moment in moments:
        await clock.advance((moment - now) * STEP)
        now = moment
        await drain()
        for key, arrival in enumerate(arrivals):
            if arrival == moment:
                predicted[key] = moment * STEP + limiter.delay()
                rec.spawn(key)
                await drain()
        await drain()
    await asyncio.wait_for(asyncio.gather(*rec.tasks), timeout=5)
    keys = range(len(arrivals))
    return [rec.granted[k] for k in keys], [predicted[k] for k in keys]


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    window=st.integers(min_value=1, max_value=40),
    gaps=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=30),
)
def test_any_arrival_pattern_gets_the_earliest_strict_fifo_schedule(limit: int, window: int, gaps: list[int]) -> None:
    """For any arrivals, grants are FIFO, never exceed the limit in a window, and come as early as allowed; and
    `delay()` asked at each arrival foretold its grant exactly."""
    arrivals: list[int] = []
    at = 0
    for gap in gaps:
        at += gap
        arrivals.append(at)
    granted, predicted = asyncio.run(run_schedule(arrivals, limit, window))
    assert granted == [g * STEP for g in expected_grants(arrivals, limit, window)]
    assert predicted == granted
    assert_strict(granted, limit, window * STEP)


class ClassRecorder(Recorder):
    """A Recorder whose acquirers say whether they are background requests."""

    def spawn_as(self, key: int, *, background: bool) -> asyncio.Task[None]:
        async def one() -> None:
            await self.limiter.acquire(background=background)
            self.granted[key] = (self.clock.now() - self.start).total_seconds()
            self.order.append(key)

        task = asyncio.create_task(one())
        self.tasks.append(task)
        return task


async def test_background_requests_leave_the_reserve_to_the_others() -> None:
    """Background acquisitions stop at limit - reserved; a foreground one then passes at once, not behind them."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(10, 10.0, clock=clock)  # 20% reserved: background may fill 8 of 10
    rec = ClassRecorder(limiter, clock)
    for key in range(12):
        rec.spawn_as(key, background=True)
    await drain()
    assert sorted(rec.granted) == list(range(8))
    for key in (100, 101, 102):
        rec.spawn_as(key, background=False)
    await drain()
    assert rec.granted[100] == 0.0  # the reserve, although background requests wait
    assert rec.granted[101] == 0.0
    assert 102 not in rec.granted  # the whole limit is in use now
    await clock.advance(10.0)
    await drain()
    assert rec.granted[102] == 10.0
    assert sorted(k for k, at in rec.granted.items() if at == 10.0 and k < 100) == [8, 9, 10, 11]
    for _ in range(3):
        await clock.advance(10.0)
        await drain()
    await asyncio.wait_for(asyncio.gather(*rec.tasks), timeout=5)
    assert_strict(list(rec.granted.values()), 10, 10.0)


async def test_background_waiters_keep_their_order() -> None:
    """Background acquisitions are first come, first served among themselves."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 10.0, clock=clock, reserved=2)
    rec = ClassRecorder(limiter, clock)
    for key in range(7):
        rec.spawn_as(key, background=True)
    for _ in range(4):
        await drain()
        await clock.advance(10.0)
    await asyncio.wait_for(asyncio.gather(*rec.tasks), timeout=5)
    assert rec.order == list(range(7))
    assert rec.granted == {0: 0.0, 1: 0.0, 2: 0.0, 3: 10.0, 4: 10.0, 5: 10.0, 6: 20.0}


@pytest.mark.parametrize("reserved", [-1, 5, 6])
def test_a_reserve_outside_the_limit_is_refused(reserved: int) -> None:
    """The reserve must leave background requests at least one slot."""
    with pytest.raises(ValueError, match="reserved"):
        SlidingWindowLimiter(5, 10.0, clock=FakeClock(), reserved=reserved)

"""When the daemon process runs full garbage collections: on a schedule, not whenever allocations say so.

The interpreter starts a full collection after every ten collections of the middle generation (and once the objects
waiting for one are a quarter of those already old). Under 1,000 webhooks/s that was one every ~10 s, and each one
walked every object that had grown old since the fleet was frozen (`monitor.fleet.settle_heap`): replaced states,
incidents, sessions. At 100,000 connections that was 40-150 ms with the event loop stopped, a dozen times in a
two-minute run, and a scrape every second (whose samples are short-lived objects) brought the next one sooner. Those
stalls made the webhook p99 (bench/scrape.py). Young collections stay automatic; full ones run every
`FULL_COLLECTION_INTERVAL` seconds, so the same stall happens about once in two minutes instead of six times a minute.
Each scheduled one still stops the loop: 96.5 ms at 100,000 connections after two minutes of that load. What they
free is only the cyclic garbage that had grown old first (young cycles, such as a failed request's exception and its
frames, still go in young collections): 6,666 objects in those two minutes."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

from monitor.clock import Clock

log = structlog.get_logger()

FULL_COLLECTION_INTERVAL = 120.0
_NEVER = 1_000_000_000  # middle-generation collections before an automatic full one


def defer_full_collections() -> tuple[int, int, int]:
    """Stop the automatic full collections (young ones are untouched); return the thresholds as they were."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    return before


async def collect_periodically(
    clock: Clock,
    interval: float = FULL_COLLECTION_INTERVAL,
    collect: Callable[[], int] = gc.collect,
) -> None:
    """Run a full collection every `interval` seconds of `clock`, until cancelled."""
    while True:
        await clock.sleep(interval)
        started = time.perf_counter()
        found = collect()
        log.info("full garbage collection", seconds=round(time.perf_counter() - started, 4), unreachable=found)

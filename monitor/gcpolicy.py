"""When the daemon process runs full garbage collections: on a schedule, not whenever allocations say so.

The interpreter starts a full collection after every ten collections of the middle generation (and once the objects
waiting for one are a quarter of those already old). Under 1,000 webhooks/s that was one every ~10 s, and each one
walked every object that had grown old since the fleet was frozen (`monitor.fleet.settle_heap`): replaced states,
incidents, sessions. At 100,000 connections that was 40-150 ms with the event loop stopped, a dozen times in a
two-minute run, and a scrape every second (whose samples are short-lived objects) brought the next one sooner. Those
stalls made the webhook p99 (bench/scrape.py). Young collections stay automatic; full ones run every
`FULL_COLLECTION_INTERVAL` seconds, so the same stall happens about once in two minutes instead of six times a minute.
What they free is only the cyclic garbage that had grown old first (young cycles, such as a failed request's
exception and its frames, still go in young collections): 6,666 objects in two minutes of that load.

Each scheduled collection then freezes what survived it (`gc.freeze()`), so the next one walks only what grew old in
between, not everything since the start. Without that, each walked more than the last as webhooks replaced the
fleet's states (at 100,000 connections, 1,000 webhooks/s and a scrape a second, one every 40 s: 71, 135, 120 and
195 ms); with it 57, 67, 54 and 53 ms (bench/README.md, session 8). A cycle among objects that were alive at a
freeze and became garbage later is not seen by those collections, so every `THAW_EVERY`-th one unfreezes the whole
heap first and collects it all, the fleet included: the longest stall, 263-309 ms at 100,000 connections, once an
hour."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

from monitor.clock import Clock

log = structlog.get_logger()

FULL_COLLECTION_INTERVAL = 120.0
THAW_EVERY = 30  # scheduled collections per one over the whole heap, frozen part included: once an hour
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
    *,
    thaw_every: int = THAW_EVERY,
) -> None:
    """Run a full collection every `interval` seconds of `clock`, until cancelled. Each one freezes its survivors,
    so the next walks only what grew old since; every `thaw_every`-th first unfreezes the whole heap, so cycles among
    objects frozen while alive are freed within `interval * thaw_every` seconds."""
    rounds = 0
    while True:
        await clock.sleep(interval)
        rounds += 1
        whole = rounds % thaw_every == 0
        started = time.perf_counter()
        if whole:
            gc.unfreeze()
        found = collect()
        gc.freeze()
        log.info(
            "full garbage collection",
            seconds=round(time.perf_counter() - started, 4),
            unreachable=found,
            whole_heap=whole,
            frozen=gc.get_freeze_count(),
        )

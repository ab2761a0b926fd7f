"""Who may write to a SQLite file from this process, and when.

The SQLite worker (monitor.store.sqlite_writer) runs its transactions one after the other, so several of its calls
may be in flight at once: that is how webhook commits overlap. A transaction through the SQLAlchemy engine
(alerting, inventories, pruning) is different: it opens, reads and writes over several round trips. If the worker
committed in between, the engine's first write would fail at once with SQLITE_BUSY (its read snapshot is stale;
the busy handler does not retry that). So an engine transaction runs alone: it waits for the worker's calls in
flight to end, and the calls that come meanwhile wait for it. Waiting engine transactions go first, so a steady
stream of webhooks cannot starve them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class WriteGate:
    """Shared passes for the worker's calls, an exclusive pass for an engine transaction."""

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._until(lambda: not self._exclusive and self._exclusive_waiting == 0)
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._exclusive_waiting += 1
        try:
            await self._until(lambda: not self._exclusive and self._shared == 0)
        except BaseException:
            self._exclusive_waiting -= 1
            self._notify()  # shared callers may have been waiting behind this one
            raise
        self._exclusive_waiting -= 1
        self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            self._notify()

    async def _until(self, ready: Callable[[], bool]) -> None:
        # No await between a true `ready()` and the caller taking its pass: the check and the take are one step.
        while not ready():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _notify(self) -> None:
        """Wake every waiter to check again (few wait at once: the processor, the alert engine, the inbox)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

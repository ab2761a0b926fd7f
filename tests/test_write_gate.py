"""The SQLite write gate: the worker's calls overlap, an engine transaction runs alone, and a waiting engine
transaction is not starved by a steady stream of worker calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from monitor.store.gate import WriteGate


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def hold(gate_pass: Callable[[], contextlib.AbstractAsyncContextManager[None]], log: list[str], name: str,
               release: asyncio.Event) -> None:  # fmt: skip
    async with gate_pass():
        log.append(f"{name} in")
        await release.wait()
    log.append(f"{name} out")


@contextlib.asynccontextmanager
async def running(*tasks: asyncio.Task[None]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_shared_passes_overlap_and_an_exclusive_one_waits_for_them_all() -> None:
    gate, log = WriteGate(), []
    r1, r2, r3 = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(hold(gate.shared, log, "a", r1))
    b = asyncio.create_task(hold(gate.shared, log, "b", r2))
    await turns()
    e = asyncio.create_task(hold(gate.exclusive, log, "e", r3))
    async with running(a, b, e):
        await turns()
        assert log == ["a in", "b in"]
        r1.set()
        await turns()
        assert "e in" not in log
        r2.set()
        await turns()
        assert log[-1] == "e in"
        r3.set()
        await turns()
        assert log[-1] == "e out"


async def queue_up(gate: WriteGate, log: list[str]) -> tuple[tuple[asyncio.Task[None], ...], tuple[asyncio.Event, ...]]:
    """`a` holds a shared pass, then `e` asks for the exclusive one, then `late` for a shared one."""
    r1, r2, r3 = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(hold(gate.shared, log, "a", r1))
    await turns()
    e = asyncio.create_task(hold(gate.exclusive, log, "e", r2))
    await turns()
    late = asyncio.create_task(hold(gate.shared, log, "late", r3))
    return (a, e, late), (r1, r2, r3)


async def test_a_waiting_exclusive_pass_goes_before_later_shared_ones() -> None:
    gate, log = WriteGate(), []
    tasks, (r1, r2, r3) = await queue_up(gate, log)
    async with running(*tasks):
        await turns()
        assert log == ["a in"], "a shared pass asked for after the exclusive one waits for it"
        r1.set()
        await turns()
        assert log == ["a in", "a out", "e in"]
        r2.set()
        await turns()
        assert log[-2:] == ["e out", "late in"]
        r3.set()


async def test_a_cancelled_exclusive_waiter_lets_the_shared_ones_through() -> None:
    gate, log = WriteGate(), []
    (a, e, late), (r1, _, r3) = await queue_up(gate, log)
    async with running(a, e, late):
        await turns()
        e.cancel()
        await turns()
        assert log == ["a in", "late in"]
        r1.set()
        r3.set()
        await turns()
        assert "e in" not in log


async def test_an_exclusive_pass_shuts_out_everyone_until_it_ends() -> None:
    gate, log = WriteGate(), []
    r1, r2, r3 = asyncio.Event(), asyncio.Event(), asyncio.Event()
    e = asyncio.create_task(hold(gate.exclusive, log, "e", r1))
    await turns()
    s = asyncio.create_task(hold(gate.shared, log, "s", r2))
    e2 = asyncio.create_task(hold(gate.exclusive, log, "e2", r3))
    async with running(e, s, e2):
        await turns()
        assert log == ["e in"]
        r1.set()
        await turns()
        assert log[:3] == ["e in", "e out", "e2 in"], "the waiting exclusive pass goes first"
        r3.set()
        await turns()
        assert log[-1] == "s in"
        r2.set()

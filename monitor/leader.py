"""Leadership among replicas that share one store. Every replica accepts webhooks into the shared inbox and serves
the API; only the leader processes the inbox, polls Rutter and sends notifications, so two replicas never double
a transition, a request budget or a Slack message. PostgreSQL: a session advisory lock, released by the server
when the leader's connection dies. SQLite: an exclusive lock on a file beside the database, so a second process
pointed at the same file stands by instead of racing."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger()

# pg_try_advisory_lock key: "Rutt" in ASCII, so it is recognisable in pg_locks.
LOCK_KEY = 0x52757474


class Leadership(Protocol):
    async def acquire(self) -> bool:
        """Take leadership if it is free; True while this replica holds it."""
        ...

    async def check(self) -> bool:
        """Is leadership still held (the lock's connection alive)?"""
        ...

    async def release(self) -> None: ...


class AdvisoryLock:
    """PostgreSQL: a session-level advisory lock held on a dedicated connection."""

    def __init__(self, engine: AsyncEngine, key: int = LOCK_KEY) -> None:
        self._engine = engine
        self._key = key
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> bool:
        if self._conn is not None:
            return await self.check()
        try:
            conn = await self._engine.connect()
        except Exception as exc:  # the store is down: not the leader now, try again later
            log.warning("leadership attempt failed", error=type(exc).__name__)
            return False
        try:
            got = (await conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})).scalar()
            await conn.commit()
        except Exception as exc:
            log.warning("leadership attempt failed", error=type(exc).__name__)
            await _close(conn)
            return False
        if got:
            self._conn = conn
            return True
        await _close(conn)
        return False

    async def check(self) -> bool:
        if self._conn is None:
            return False
        try:
            await self._conn.execute(sa.text("SELECT 1"))
            await self._conn.commit()
        except Exception as exc:
            log.error("leadership lost", error=type(exc).__name__)
            conn, self._conn = self._conn, None
            await _close(conn)
            return False
        return True

    async def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            await conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            await conn.commit()
        await _close(conn)


class FileLock:
    """SQLite: flock on `<database>.leader`; the kernel releases it when the process dies, even on kill -9."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    async def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def check(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Alone:
    """An in-memory database has one process by definition."""

    async def acquire(self) -> bool:
        return True

    async def check(self) -> bool:
        return True

    async def release(self) -> None:
        return None


def leadership_for(url: str, engine: AsyncEngine) -> Leadership:
    """The leadership mechanism that fits the store behind `url`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return AdvisoryLock(engine)
    database = parsed.database
    if not database or database == ":memory:":
        return Alone()
    return FileLock(Path(database + ".leader"))


async def _close(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()

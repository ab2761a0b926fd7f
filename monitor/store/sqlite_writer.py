"""The hot SQLite writes in one hop to a child process: the webhook inbox insert and the state save.

Through SQLAlchemy and aiosqlite, one transaction was five or six sequential round trips to the driver's thread
(checkout, BEGIN, execute, COMMIT, the pool's reset), each handed back through a busy event loop. A single worker
thread that ran the whole transaction in one call was better, but not enough: the thread needs the GIL to start the
work, to bind the parameters, after each statement and to hand the result back, and while the event loop holds the
GIL every one of those waits. At ~3,800 webhooks/s an inbox commit cycle took ~8 ms, of which the INSERT and fsync
were under 4 and the disk about 1 (bench/README.md). So the transactions now run in a child process
(monitor.store.sqlite_worker) with its own interpreter: the event loop writes the rows to a Unix socket and reads
the answer when it arrives, like any other socket, and neither side waits for a lock the other holds. Calls may
overlap (the worker runs them in order), so a group commit can go out while the one before is still in flight.
Measured (bench/README.md, session 4): the closed loop gained nothing beyond the noise, since the daemon's process is
CPU-bound there; the tail did: p99 ack at 2,000 webhooks/s 25-29 ms against 33-104 ms with the thread.

Durability is unchanged: WAL with synchronous=FULL, the worker answers after the COMMIT's fsync, and only then does
the caller go on (and answer the webhook). Other writers on the same file (the engine's connections, a standby
replica) are serialised by SQLite's own lock; waiting for it happens in the worker (busy_timeout). If the worker
dies, the call in flight fails (the caller answers 503, and a webhook sender retries) and the next call starts a
new worker. If the daemon dies, the worker reads the end of its stdin and exits."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import sqlite3
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.store import InboxItem
from monitor.store import sqlite_worker as worker
from monitor.store.gate import WriteGate
from monitor.store.tables import sqlite_text

Row = worker.Row
_WORKER = str(Path(worker.__file__).resolve())
_EXIT_GRACE_S = 10.0
_SOCKET_BUFFER = 1 << 20  # bytes; the kernel caps it at net.core.wmem_max
_ROWS_PER_PART = 5_000
_RESTART_BACKOFF_S = 1.0


class WorkerGone(sqlite3.OperationalError):
    """The worker process ended (killed, or failed to open the database) before it answered."""


@dataclass(slots=True)
class _Channel:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: deque[asyncio.Future[tuple[bool, Any]]] = field(default_factory=deque)  # in the order sent
    answered: int = 0
    replies: asyncio.Task[None] | None = None


class SqliteWriter:
    """Runs whole write transactions on a SQLite file in a child process. Calls may overlap: the worker runs them
    one after the other, in the order they were made, and each call returns when its own transaction is durable."""

    def __init__(self, path: str, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._channel: _Channel | None = None
        self._starting = asyncio.Lock()  # one worker started at a time
        self._retry_at = 0.0  # loop time before which no new worker is started, after one that never answered
        self.starts = 0  # workers started so far (a worker that cannot start must not be restarted per call)
        self._parts = WriteGate()  # a save sent in parts holds it alone: no other call may join its transaction

    @property
    def pid(self) -> int | None:
        """The worker's process id while one runs (tests kill it)."""
        channel = self._channel
        return channel.proc.pid if channel is not None and channel.proc.returncode is None else None

    async def insert_inbox(self, items: Sequence[InboxItem]) -> list[int]:
        """Insert `items` in one durable transaction; their ids in order. Raises sqlite3.Error."""
        rows: list[Row] = [
            (
                sqlite_text(item.received_at),
                item.code,
                item.connection_id,
                item.body_hash,
                item.body,
                item.access_token,
                1 if item.is_lifecycle else 0,
            )
            for item in items
        ]
        async with self._parts.shared():
            ids: list[int] = await self._call("insert_inbox", rows)
        return ids

    async def save(
        self, upsert_sql: str, states: list[Row], transitions: list[Row], processed: Sequence[int], at: str
    ) -> None:
        """Upsert `states` (driver-ready rows for `upsert_sql`, one row per statement's VALUES group), insert
        `transitions` and mark the `processed` inbox rows, in one durable transaction. Raises sqlite3.Error.

        A large save (an inventory of 100,000 new connections) goes over in parts of `_ROWS_PER_PART` rows, each
        executed as it arrives, inside one transaction that no other call joins: sent whole, the worker held it
        twice over (the message and the rows) and peaked at ~120 MB (bench/scale.py)."""
        processed = list(processed)
        if len(states) + len(transitions) + len(processed) <= _ROWS_PER_PART:
            async with self._parts.shared():
                await self._call("save", upsert_sql, states, transitions, processed, at)
            return
        async with self._parts.exclusive():
            await self._call("begin")
            try:
                # The statements in the order of a whole save: every state before any transition (they refer
                # to their connection), then the processed marks.
                n = _ROWS_PER_PART
                for start in range(0, len(states), n):
                    await self._call("save_part", upsert_sql, states[start : start + n], [], [], at)
                for start in range(0, len(transitions), n):
                    await self._call("save_part", upsert_sql, [], transitions[start : start + n], [], at)
                for start in range(0, len(processed), n):
                    await self._call("save_part", upsert_sql, [], [], processed[start : start + n], at)
                await self._call("commit")
            except BaseException:
                with contextlib.suppress(Exception):  # a worker that died took the transaction with it
                    await asyncio.shield(self._call("rollback"))
                raise

    async def close(self) -> None:
        """End the worker once it has answered every call made so far: it reads the end of its input, and exits."""
        async with self._starting:
            channel, self._channel = self._channel, None
        if channel is None:
            return
        with contextlib.suppress(ConnectionError, OSError):
            channel.writer.write_eof()
        assert channel.replies is not None
        try:
            await asyncio.wait_for(asyncio.shield(channel.replies), _EXIT_GRACE_S)
        except TimeoutError:
            channel.replies.cancel()
            await asyncio.gather(channel.replies, return_exceptions=True)

    async def _call(self, operation: str, *args: object) -> Any:
        request = worker.frame((operation, args))
        channel = await self._worker()
        reply: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        channel.pending.append(reply)  # in the same step as the write: replies come back in this order
        channel.writer.write(request)
        with contextlib.suppress(ConnectionError):  # the worker is gone: the reply task fails `reply`
            await channel.writer.drain()
        ok, value = await reply
        if ok:
            return value
        kind, message = value
        error = getattr(sqlite3, kind, None)
        if not (isinstance(error, type) and issubclass(error, sqlite3.Error)):
            error = sqlite3.DatabaseError
        raise error(message)

    async def _read_replies(self, channel: _Channel) -> None:
        """Hand each reply to its call; once the worker has gone, fail the calls it did not answer."""
        try:
            while True:
                size = int.from_bytes(await channel.reader.readexactly(worker.HEADER), "big")
                reply = pickle.loads(await channel.reader.readexactly(size))  # noqa: S301 (our own child)
                future = channel.pending.popleft()
                channel.answered += 1
                if not future.done():  # its caller may have been cancelled
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            channel.writer.close()
            with contextlib.suppress(ProcessLookupError):
                channel.proc.kill()  # a no-op once it exited
            code = await channel.proc.wait()
            if self._channel is channel:
                self._channel = None
            if channel.answered == 0:  # it could not start (a bad path, a full disk): no respawn per webhook
                self._retry_at = asyncio.get_running_loop().time() + _RESTART_BACKOFF_S
            while channel.pending:
                future = channel.pending.popleft()
                if not future.done():
                    future.set_exception(WorkerGone(f"sqlite worker exited ({code}) before it answered"))

    async def _worker(self) -> _Channel:
        async with self._starting:
            if self._channel is not None:
                return self._channel
            if asyncio.get_running_loop().time() < self._retry_at:
                raise WorkerGone("sqlite worker failed to start; the next start is in a moment")
            self.starts += 1
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                for end in (parent, child):  # a whole group commit fits, so one write hands it over
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    _WORKER,
                    self._path,
                    str(int(self._busy_timeout_ms)),
                    stdin=child.fileno(),
                    stdout=child.fileno(),
                    start_new_session=True,  # a Ctrl-C at a terminal reaches the daemon, which drains, not the worker
                )
            except BaseException:
                parent.close()
                raise
            finally:
                child.close()
            reader, writer = await asyncio.open_unix_connection(sock=parent)
            channel = _Channel(proc, reader, writer)
            channel.replies = asyncio.create_task(self._read_replies(channel), name="sqlite-worker-replies")
            self._channel = channel
            return channel

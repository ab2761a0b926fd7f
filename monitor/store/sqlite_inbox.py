"""The webhook inbox write on SQLite in one thread hop.

Through SQLAlchemy and aiosqlite, one group commit was six sequential round trips to the driver's thread (cursor,
execute, fetch, close, commit, the pool's reset), each handed back through a busy event loop: the single writer was
busy all the time and capped ingest near 2,000 webhooks/s (bench/ingest.py). Here a plain `sqlite3` connection,
owned by one worker thread, runs BEGIN IMMEDIATE, the INSERTs and COMMIT in a single call, so the event loop hands
the batch over once and gets the ids back once; the thread does the fsync while the loop goes on with requests.

Durability is unchanged: WAL with synchronous=FULL, the commit returns after the fsync, and only then are the
requests answered. Other writers on the same file (the daemon's SQLAlchemy engine, a standby replica) are
serialised by SQLite's own lock; waiting for it happens in this thread (busy_timeout), never on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from monitor.store import InboxItem
from monitor.store.tables import sqlite_text

_COLUMNS = "received_at, code, connection_id, body_hash, body, access_token, is_lifecycle"
_ROW = "(?, ?, ?, ?, ?, ?, ?)"
_ROWS_PER_STATEMENT = 1000  # 7,000 parameters, well under SQLite's 32,766


def _insert_sql(rows: int) -> str:
    """The statement for `rows` rows: only placeholders vary, every value is bound."""
    return f"INSERT INTO webhook_inbox ({_COLUMNS}) VALUES {', '.join([_ROW] * rows)}"  # noqa: S608


class SqliteInbox:
    """Inserts inbox batches into a SQLite file from one dedicated thread; one transaction per batch."""

    def __init__(self, path: str, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox-writer")
        self._conn: sqlite3.Connection | None = None  # opened and used only on the worker thread

    async def insert(self, items: Sequence[InboxItem]) -> list[int]:
        """Insert `items` in one durable transaction; their ids in order. Raises sqlite3.Error."""
        rows: list[tuple[object, ...]] = [
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
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._insert, rows)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    # -- on the worker thread ------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _insert(self, rows: list[tuple[object, ...]]) -> list[int]:
        """One multi-row INSERT per thousand rows: each statement is one call into SQLite, so this thread takes the
        GIL back a handful of times per batch rather than once per row (while the event loop holds the GIL, each
        take-back can wait up to the interpreter's 5 ms switch interval; per-row INSERTs spent most of the batch
        waiting so). Ids are consecutive: this transaction holds the write lock and the table's AUTOINCREMENT
        hands each row of a statement the next id."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids: list[int] = []
            for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                chunk = rows[start : start + _ROWS_PER_STATEMENT]
                cursor = conn.execute(_insert_sql(len(chunk)), [value for row in chunk for value in row])
                last = cursor.lastrowid
                if last is None or cursor.rowcount != len(chunk):
                    raise sqlite3.DatabaseError("inbox insert did not report its rows")
                ids.extend(range(last - len(chunk) + 1, last + 1))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return ids

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

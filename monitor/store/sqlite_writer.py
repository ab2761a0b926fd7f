"""The hot SQLite writes in one thread hop: the webhook inbox insert and the state save.

Through SQLAlchemy and aiosqlite, one transaction was five or six sequential round trips to the driver's thread
(checkout, BEGIN, execute, COMMIT, the pool's reset), each handed back through a busy event loop: an inbox group
commit waited on the loop between its steps, and a processor save of 100 rows held SQLite's write lock for
16 ms (p50) while the inbox waited behind it (bench/ingest.py). Here a plain `sqlite3` connection, owned by one
worker thread, runs BEGIN IMMEDIATE, the statements and COMMIT in a single call, so the event loop hands the work
over once and gets the result back once; the thread does the fsync while the loop goes on with requests. Each
statement covers many rows (multi-row INSERT), so the thread takes the GIL back a handful of times per
transaction rather than once per row: while the event loop holds the GIL each take-back can wait up to the
interpreter's 5 ms switch interval, and per-row statements spent most of a transaction waiting so.

Durability is unchanged: WAL with synchronous=FULL, the commit returns after the fsync, and only then does the
caller go on (and answer the webhook). Other writers on the same file (the engine's connections, a standby
replica) are serialised by SQLite's own lock; waiting for it happens in this thread (busy_timeout)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from monitor.store import InboxItem
from monitor.store.tables import sqlite_text

_T = TypeVar("_T")
_INBOX_COLUMNS = "received_at, code, connection_id, body_hash, body, access_token, is_lifecycle"
_TRANSITION_COLUMNS = "connection_id, dimension, from_state, to_state, at, source, reason"
_MAX_PARAMETERS = 30_000  # per statement; SQLite allows 32,766
_INBOX_ROWS_PER_STATEMENT = _MAX_PARAMETERS // 7
Row = tuple[object, ...]


def _values(columns: int, rows: int) -> str:
    row = f"({', '.join('?' * columns)})"
    return ", ".join([row] * rows)


class SqliteWriter:
    """Runs whole write transactions on a SQLite file from one dedicated thread."""

    def __init__(self, path: str, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None  # opened and used only on the worker thread

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
        if len(rows) <= _INBOX_ROWS_PER_STATEMENT:
            # One statement is its own transaction: no BEGIN and COMMIT, each a GIL take-back of its own.
            return await self._call(lambda conn: _insert_inbox(conn, rows))
        return await self._run(lambda conn: _insert_inbox(conn, rows))

    async def save(
        self, upsert_sql: str, states: list[Row], transitions: list[Row], processed: Sequence[int], at: str
    ) -> None:
        """Upsert `states` (driver-ready rows for `upsert_sql`, one row per statement's VALUES group), insert
        `transitions` and mark the `processed` inbox rows, in one durable transaction. Raises sqlite3.Error."""
        await self._run(lambda conn: _save(conn, upsert_sql, states, transitions, processed, at))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` in one explicit transaction on the writer thread."""
        return await self._call(lambda conn: self._transaction(conn, work))

    async def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` on the writer thread, in autocommit mode (a single statement is atomic and durable alone)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._connection()))

    # -- on the worker thread ------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @staticmethod
    def _transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _insert_inbox(conn: sqlite3.Connection, rows: list[Row]) -> list[int]:
    """Multi-row INSERTs; a statement's ids are consecutive, since it holds the write lock while it runs and the
    table's AUTOINCREMENT hands each of its rows the next id."""
    ids: list[int] = []
    for start in range(0, len(rows), _INBOX_ROWS_PER_STATEMENT):
        chunk = rows[start : start + _INBOX_ROWS_PER_STATEMENT]
        sql = f"INSERT INTO webhook_inbox ({_INBOX_COLUMNS}) VALUES {_values(7, len(chunk))}"  # noqa: S608
        cursor = conn.execute(sql, [value for row in chunk for value in row])
        last = cursor.lastrowid
        if last is None or cursor.rowcount != len(chunk):
            raise sqlite3.DatabaseError("inbox insert did not report its rows")
        ids.extend(range(last - len(chunk) + 1, last + 1))
    return ids


def _save(
    conn: sqlite3.Connection,
    upsert_sql: str,
    states: list[Row],
    transitions: list[Row],
    processed: Sequence[int],
    at: str,
) -> None:
    if states:
        head, _, tail = _split_upsert(upsert_sql)
        columns = len(states[0])
        per_statement = _MAX_PARAMETERS // columns
        for start in range(0, len(states), per_statement):
            chunk = states[start : start + per_statement]
            conn.execute(f"{head}{_values(columns, len(chunk))}{tail}", [v for row in chunk for v in row])
    per_statement = _MAX_PARAMETERS // 7
    for start in range(0, len(transitions), per_statement):
        chunk = transitions[start : start + per_statement]
        sql = f"INSERT INTO transitions ({_TRANSITION_COLUMNS}) VALUES {_values(7, len(chunk))}"  # noqa: S608
        conn.execute(sql, [value for row in chunk for value in row])
    per_statement = _MAX_PARAMETERS - 1
    for start in range(0, len(processed), per_statement):
        ids = list(processed[start : start + per_statement])
        marks = ", ".join("?" * len(ids))
        conn.execute(
            f"UPDATE webhook_inbox SET processed_at = ?, access_token = NULL "  # noqa: S608
            f"WHERE id IN ({marks}) AND processed_at IS NULL",
            [at, *ids],
        )


def _split_upsert(sql: str) -> tuple[str, str, str]:
    """`INSERT INTO t (...) VALUES (?, ...) ON CONFLICT ...` as (head up to VALUES, the one row, the tail), so one
    statement can carry many rows."""
    head, marker, rest = sql.partition(" VALUES ")
    if not marker or not rest.startswith("("):
        raise ValueError("unexpected upsert statement")
    close = rest.index(")")
    return f"{head}{marker}", rest[: close + 1], rest[close + 1 :]

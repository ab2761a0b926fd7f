"""The child process that runs the hot SQLite write transactions (see monitor.store.sqlite_writer).

Standard library only, and started by its file path, so the process is up in tens of milliseconds without importing
the daemon. It reads requests from stdin and writes one reply per request to stdout, each a 4-byte big-endian
length and a pickle: a request is `(operation, args)`, a reply `(True, result)` or `(False, (error class, message))`.
It runs one request at a time, in order. It ignores SIGINT and SIGTERM, so that a Ctrl-C or a stop sent to the
whole process group leaves it to finish what the daemon still sends while it drains; it exits when stdin closes,
which is also what happens when the daemon dies, even by kill -9."""

from __future__ import annotations

import json
import pickle
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar

_T = TypeVar("_T")
_INBOX_COLUMNS = "received_at, code, connection_id, body_hash, body, access_token, is_lifecycle"
_TRANSITION_COLUMNS = "connection_id, dimension, from_state, to_state, at, source, reason"
_MAX_PARAMETERS = 30_000  # per statement; SQLite allows 32,766
INBOX_ROWS_PER_STATEMENT = _MAX_PARAMETERS // 7
HEADER = 4
Row = tuple[object, ...]


def connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """Autocommit mode (transactions are explicit), WAL with synchronous=FULL: a commit returns after its fsync."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _values(columns: int, rows: int) -> str:
    row = f"({', '.join('?' * columns)})"
    return ", ".join([row] * rows)


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


def insert_inbox(conn: sqlite3.Connection, rows: list[Row]) -> list[int]:
    """The rows in one durable transaction; their ids in order. One statement is its own transaction, so a batch
    that fits one needs no BEGIN and COMMIT."""
    if len(rows) <= INBOX_ROWS_PER_STATEMENT:
        return _insert_inbox(conn, rows)
    return _transaction(conn, lambda c: _insert_inbox(c, rows))


def _insert_inbox(conn: sqlite3.Connection, rows: list[Row]) -> list[int]:
    """Multi-row INSERTs; a statement's ids are consecutive, since it holds the write lock while it runs and the
    table's AUTOINCREMENT hands each of its rows the next id."""
    ids: list[int] = []
    for start in range(0, len(rows), INBOX_ROWS_PER_STATEMENT):
        chunk = rows[start : start + INBOX_ROWS_PER_STATEMENT]
        sql = f"INSERT INTO webhook_inbox ({_INBOX_COLUMNS}) VALUES {_values(7, len(chunk))}"  # noqa: S608
        cursor = conn.execute(sql, [value for row in chunk for value in row])
        last = cursor.lastrowid
        if last is None or cursor.rowcount != len(chunk):
            raise sqlite3.DatabaseError("inbox insert did not report its rows")
        ids.extend(range(last - len(chunk) + 1, last + 1))
    return ids


def save(conn: sqlite3.Connection, *part: Any) -> None:
    """`save_part` in one durable transaction of its own."""
    _transaction(conn, lambda c: save_part(c, *part))


def save_part(
    conn: sqlite3.Connection,
    upsert_sql: str,
    states: list[Row],
    transitions: list[Row],
    processed: Sequence[int],
    at: str,
) -> None:
    """Upsert the states, insert the transitions and mark the processed inbox rows (at `at`), in the transaction
    open on `conn`."""
    if states:
        head, _, tail = split_upsert(upsert_sql)
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


def split_upsert(sql: str) -> tuple[str, str, str]:
    """`INSERT INTO t (...) VALUES (?, ...) ON CONFLICT ...` as (head up to VALUES, the one row, the tail), so one
    statement can carry many rows."""
    head, marker, rest = sql.partition(" VALUES ")
    if not marker or not rest.startswith("("):
        raise ValueError("unexpected upsert statement")
    close = rest.index(")")
    return f"{head}{marker}", rest[: close + 1], rest[close + 1 :]


def begin(conn: sqlite3.Connection) -> None:
    """Open a transaction that the next calls (`save_part`) join, until `commit` or `rollback`."""
    conn.execute("BEGIN IMMEDIATE")


def commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


OPERATIONS: dict[str, Callable[..., Any]] = {
    "insert_inbox": insert_inbox,
    "save": save,
    "begin": begin,
    "save_part": save_part,
    "commit": commit,
    "rollback": rollback,
}


def frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER, "big") + data


def _read_frame(stream: BinaryIO) -> Any:
    """The next request, or None at the end of the stream."""
    header = stream.read(HEADER)
    if len(header) < HEADER:
        return None
    size = int.from_bytes(header, "big")
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 (the only writer is the daemon that started this process)


def serve(conn: sqlite3.Connection, requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until the stream ends. A failed operation is answered with its error's class and message
    (SQLite's messages quote no parameters); any other exception is answered with its class alone."""
    while (request := _read_frame(requests)) is not None:
        operation, args = request
        try:
            reply: tuple[bool, object] = (True, OPERATIONS[operation](conn, *args))
        except sqlite3.Error as exc:
            reply = (False, (type(exc).__name__, str(exc)))
        except Exception as exc:  # answered, so the daemon fails this request and goes on
            reply = (False, ("DatabaseError", f"sqlite worker: {type(exc).__name__}"))
        replies.write(frame(reply))
        replies.flush()


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, busy_timeout_ms = argv[1], int(argv[2])
    try:
        conn = connect(path, busy_timeout_ms)
    except sqlite3.Error as exc:  # one log line in the daemon's format, not a traceback; the daemon answers 503
        event = {"event": "sqlite worker could not open the database", "error": str(exc), "level": "error"}
        print(json.dumps(event), file=sys.stderr, flush=True)
        return 1
    try:
        serve(conn, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

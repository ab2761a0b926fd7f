"""structlog set-up: JSON lines when stderr is not a terminal, a readable console otherwise. Standard-library
logging (APScheduler, aiohttp, asyncio) goes through the same renderer, so every line has one format."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from structlog.typing import EventDict, WrappedLogger


class Stamper:
    """`timestamp`: ISO 8601 in UTC, to the microsecond, with a Z. The date and time to the second are formatted
    once a second: structlog's TimeStamper took 2.5 µs of a line's ~12, and every accepted webhook logs a line
    (bench/README.md, session 6)."""

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = now_ns
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        second, nanoseconds = divmod(self._now_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{nanoseconds // 1000:06d}Z"
        return event_dict


_ENCODER = json.JSONEncoder(default=repr)  # one encoder for every line: json.dumps(default=...) builds one a call


def render_json(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    """One JSON object per line; a value JSON cannot hold is written as its repr, as structlog's JSONRenderer does."""
    return _ENCODER.encode(event_dict)


_STAMPER = Stamper()
_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    _STAMPER,
]
# structlog's registry of bound context variables: while it is empty, merge_contextvars adds nothing to a line. If a
# structlog release renames it, the fast path below is off (None), never wrong.
_CONTEXT_VARS: dict[str, object] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


class _Fast:
    """The JSON chain that `configure` installed, and a writer to its file, for `webhook_line`."""

    def __init__(self, chain: list[structlog.typing.Processor], out: structlog.WriteLogger) -> None:
        self.chain = chain
        self.out = out


_fast: _Fast | None = None
_log = structlog.get_logger()


def webhook_line(event: str, code: str, connection_id: str | None) -> None:
    """Log `event` at info with a webhook's code and connection id: the line of every webhook the endpoint answers.

    Byte for byte what `log.info(event, code=..., connection_id=...)` writes under the JSON chain `configure` installs
    (tests/test_log.py holds the two side by side), built and written directly: structlog's per-call path cost ~30 µs
    more per webhook in the daemon under load than the line itself (session 7's in-process A/B); writing it so took
    the daemon's main thread from 248 to 235 µs a webhook in alternating runs (bench/README.md, session 8). Any other
    chain (the console, a test's `capture_logs`, which swaps the chain in place), a level above info or a bound
    context variable takes structlog's path."""
    fast = _fast
    if fast is None or fast.chain[-1] is not render_json or _CONTEXT_VARS:
        _log.info(event, code=code, connection_id=connection_id)
        return
    line = {"code": code, "connection_id": connection_id, "event": event, "level": "info"}
    fast.out.msg(_ENCODER.encode(_STAMPER(None, "info", line)))


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the standard logging root once per process; `json=None` picks JSON unless stderr is
    a TTY."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = render_json if json else structlog.dev.ConsoleRenderer(colors=False)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    chain: list[structlog.typing.Processor] = [*_SHARED, structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    global _fast, _log
    _fast = _Fast(chain, structlog.WriteLogger(sys.stderr)) if json and numeric <= logging.INFO else None
    _log = structlog.get_logger()  # the fallback, bound to this configuration on its first use
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))  # library debug chatter (and slack_sdk's URLs) stays out
    # a line per job run, per migration context, per autogenerate plugin (Alembic 1.16+ logs each at info)
    for chatty in ("apscheduler", "alembic.runtime.migration", "alembic.runtime.plugins"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

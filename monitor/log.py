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


_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    Stamper(),
]


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the standard logging root once per process; `json=None` picks JSON unless stderr is
    a TTY."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = render_json if json else structlog.dev.ConsoleRenderer(colors=False)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
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
    for chatty in ("apscheduler", "alembic.runtime.migration"):  # a line per job run / per migration context
        logging.getLogger(chatty).setLevel(logging.WARNING)

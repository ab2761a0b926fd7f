"""`rutter-monitor run` as a real subprocess, for the process-level tests: a clean environment, stderr captured to
a file, readiness by polling /healthz with a deadline, and a kill in every teardown. Also a TCP server that
accepts and never answers (a Rutter that hangs), signed webhook posts and a read-only look at the SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from monitor.rutter.signature import HEADER, sign
from tests.harness import free_port

# Settings read by the daemon (and the libraries it uses) that the caller's environment must not leak into a test.
_OWN_PREFIXES = ("RUTTER_", "MONITOR_", "SLACK_", "ALERTMANAGER_")


def clean_env(**settings: str) -> dict[str, str]:
    """The current environment minus every daemon setting, plus `settings` (upper-cased names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update({name.upper(): value for name, value in settings.items()})
    return env


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path, within: float = 30.0) -> tuple[int, str]:
    """Run `python -m monitor <args>` to completion; its exit code and its stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        *args,
        env=dict(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@dataclass
class DaemonProcess:
    """One `rutter-monitor run` child with its port, its environment and the file its stderr goes to."""

    env: dict[str, str]
    cwd: Path
    log_path: Path
    port: int
    proc: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def start(self) -> None:
        """Spawn the daemon; its stderr (the JSON logs) is appended to `log_path`."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "monitor",
            "run",
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    async def wait_healthy(self, http: aiohttp.ClientSession, within: float = 30.0) -> None:
        """Poll /healthz until it answers 200; fail at once if the process died, or after `within` seconds."""
        await self.wait_for_status(http, "/healthz", within)

    async def wait_ready(self, http: aiohttp.ClientSession, within: float = 30.0) -> None:
        """Poll /readyz until it answers 200 (the store answers and the first inventory is done)."""
        await self.wait_for_status(http, "/readyz", within)

    async def wait_for_status(self, http: aiohttp.ClientSession, path: str, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            if self.returncode is not None:
                raise AssertionError(f"daemon exited with {self.returncode} before {path} was 200:\n{self.logs()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            if loop.time() > deadline:
                raise AssertionError(f"{path} not 200 within {within} s:\n{self.logs()}")
            await asyncio.sleep(0.05)

    async def wait(self, within: float) -> int:
        """The exit code, once the process ended within `within` seconds (else TimeoutError)."""
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        finally:
            self._close_log()
        return code

    async def terminate(self, within: float) -> int:
        """SIGTERM, then the exit code once it exited (within `within` seconds, else TimeoutError)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(within)

    async def kill(self) -> None:
        """SIGKILL (kill -9), if it still runs, and reap it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        self._close_log()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (non-JSON lines, e.g. a traceback, are skipped)."""
        events = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    events.append(value)
        return events

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.asynccontextmanager
async def daemon_process(
    tmp_path: Path, settings: Mapping[str, str], *, log_name: str = "daemon.log"
) -> AsyncIterator[DaemonProcess]:
    """A daemon on a free loopback port with `settings` (environment names, lower or upper case), its SQLite
    file in tmp_path unless `monitor_database_url` is given; always killed on the way out."""
    port = free_port()
    values = {
        "monitor_database_url": f"sqlite+aiosqlite:///{tmp_path / 'monitor.db'}",
        "monitor_host": "127.0.0.1",
        "monitor_port": str(port),
        "monitor_log_level": "info",
        **settings,
    }
    daemon = DaemonProcess(clean_env(**values), tmp_path, tmp_path / log_name, port)
    try:
        yield daemon
    finally:
        await daemon.kill()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """The URL of a TCP listener that never accepts: connections complete (the kernel's backlog) and then no
    byte ever comes back, so every request to it hangs until the caller's own timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}/versioned"


async def post_webhook(
    http: aiohttp.ClientSession, url: str, body: bytes, secret: str | None, *, signature: str | None = None
) -> int:
    """POST a webhook signed with `secret` (or the given raw `signature`) and return the status code."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[HEADER] = signature
    elif secret is not None:
        headers[HEADER] = sign(body, secret)
    async with http.post(f"{url}/webhooks/rutter", data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    code: str
    connection_id: str | None
    body_hash: str
    processed: bool


def inbox(db: Path) -> list[InboxRow]:
    """Every webhook_inbox row of a SQLite file, read through a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT id, code, connection_id, body_hash, processed_at IS NOT NULL FROM webhook_inbox ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [InboxRow(int(r[0]), r[1], r[2], r[3], bool(r[4])) for r in rows]

"""A real `prometheus-alertmanager` for tests: a throwaway config on a free port, stopped by its handle at teardown.
Registered in conftest.py, so any test can ask for the `alertmanager` fixture (its base URL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from tests.harness import free_port
from tests.tools import require_tool

AM_CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


@dataclass(frozen=True, slots=True)
class AmProcess:
    binary: str
    args: list[str]
    url: str
    log: IO[bytes]
    log_path: Path


@pytest.fixture
def am_process(tmp_path: Path) -> Iterator[AmProcess]:
    """Config, storage and log file for one Alertmanager on a free port."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = tmp_path / "am.yml"
    config.write_text(AM_CONFIG)
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    args = [
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with log_path.open("wb") as log:
        yield AmProcess(binary, args, f"http://127.0.0.1:{port}", log, log_path)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def alertmanager(am_process: AmProcess, session: aiohttp.ClientSession) -> AsyncIterator[str]:
    """A running Alertmanager's base URL; the process is stopped by its PID at teardown."""
    proc = await asyncio.create_subprocess_exec(
        am_process.binary, *am_process.args, stdout=am_process.log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        await _wait_ready(session, am_process, proc)
        yield am_process.url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(session: aiohttp.ClientSession, am: AmProcess, proc: asyncio.subprocess.Process) -> None:
    """Poll /-/ready (Alertmanager is up in well under a second) until it answers 200."""
    async with asyncio.timeout(15):
        while True:
            if proc.returncode is not None:
                pytest.fail(f"alertmanager exited: {am.log_path.read_text(errors='replace')[-2000:]}")
            try:
                async with session.get(f"{am.url}/-/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)  # waiting for a process to start, not for time to pass


async def active_alerts(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/api/v2/alerts", params={"active": "true"}) as response:
        assert response.status == 200
        alerts: list[dict[str, Any]] = await response.json()
    return alerts

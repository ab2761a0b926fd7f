"""Shared plumbing of the benchmarks: subprocesses (the daemon, the simulator, the baseline servers) on loopback,
waiting for them, their memory from /proc, percentiles and the tables every script prints.

Every process a benchmark starts is a child it stops itself, by pid, in a `finally`."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable
CLI = str(VENV_BIN / "rutter-monitor")
CLIENT_ID = "sim-client-id"
SECRET = "sim-client-secret"  # noqa: S105 - the simulator's made-up credential, also the webhook signing key
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def machine() -> str:
    """One line naming the machine, so a table is never read without it."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU(s), {model}, Linux {platform.release()}, Python {platform.python_version()}"


def workdir(name: str) -> Path:
    """A fresh scratch folder on the same disk as /tmp (SQLite's fsync is real there)."""
    return Path(tempfile.mkdtemp(prefix=f"rutter-bench-{name}-"))


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


@dataclass
class Proc:
    """A child process whose output goes to a file (a pipe nobody reads could stall it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def status_kb(self, key: str) -> int:
        """A `kB` field of /proc/<pid>/status (VmHWM is the peak resident set, VmRSS the current one), summed over
        the process and its live descendants: the daemon's SQLite worker is part of its footprint. For VmHWM the
        sum of each one's peak is an upper bound of their peak together."""
        return sum(_status_kb(pid, key) for pid in [self.pid, *_descendants(self.pid)])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines the process wrote (structlog renders JSON when stderr is not a TTY)."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


def spawn(name: str, args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None) -> Proc:
    """Start a child with stdout and stderr in `log_dir/name.log`."""
    log_path = log_dir / f"{name}.log"
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its whole life
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    out.close()
    return Proc(name, popen, log_path)


@contextmanager
def running(*procs: Proc) -> Iterator[None]:
    """Stop every given process on the way out, in reverse order."""
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


async def wait_http(url: str, proc: Proc | None = None, *, status: int = 200, within: float = 120.0) -> float:
    """Poll `url` every 20 ms until it answers `status`; the seconds it took."""
    started = time.perf_counter()
    deadline = started + within
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await resp.read()
                    if resp.status == status:
                        return time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
    tail = proc.tail() if proc is not None else ""
    raise TimeoutError(f"{url} did not answer {status} within {within} s\n{tail}")


def simulator(
    log_dir: Path,
    *,
    connections: int,
    platforms: Sequence[str] | None = None,
    port: int | None = None,
    evolve: bool = False,
    rate_limit: int = 500,
    initial_mix: str = "mixed",
) -> tuple[Proc, str]:
    """`rutter-monitor simulate` in a child process; the process and its API base URL."""
    port = port or free_port()
    args = [CLI, "simulate", "--host", HOST, "--port", str(port), "--connections", str(connections)]
    args += ["--rate-limit", str(rate_limit), "--initial-mix", initial_mix]
    if platforms:
        args += ["--platforms", ",".join(platforms)]
    if not evolve:
        args.append("--no-evolve")
    return spawn("simulator", args, log_dir), f"http://{HOST}:{port}"


def daemon_env(api_url: str, database: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of `rutter-monitor run` against the simulator at `api_url`."""
    env = {
        "RUTTER_CLIENT_ID": CLIENT_ID,
        "RUTTER_CLIENT_SECRET": SECRET,
        "RUTTER_API_URL": f"{api_url}/versioned",
        "MONITOR_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "MONITOR_HOST": HOST,
        "MONITOR_PORT": str(port),
        "MONITOR_LOG_LEVEL": "info",
    }
    env.update({key.upper(): value for key, value in extra.items()})
    return env


def daemon(log_dir: Path, env: Mapping[str, str], name: str = "daemon") -> Proc:
    """The real daemon, `rutter-monitor run`, as an operator starts it."""
    return spawn(name, [CLI, "run"], log_dir, env)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (it reads as well in a terminal as in bench/README.md)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def banner(title: str) -> None:
    print(f"\n## {title}\n\nmachine: {machine()}\n", flush=True)


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics body, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample_sum(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name and all((k, v) in sample_labels for k, v in labels.items()):
            total += value
    return total

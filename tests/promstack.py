"""Real Prometheus and Alertmanager for the end-to-end test: test variants of the kit's configs (deploy/prometheus.yml,
alerts/rules.yml with `for:` scaled down, alerts/alertmanager.yml pointed at a fake Slack), the two binaries started
on loopback with a bounded wait for /-/ready and stopped by PID, a small HTTP API client, and a reader that splits
an alert expression into the operands of its comparisons."""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, overload

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "rules.yml"
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
FOR_SCALE = 300  # a rule's `for:` of 5 minutes waits 1 second; 1 hour waits 12 s
T = TypeVar("T")

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def prom_seconds(duration: str) -> float:
    """Seconds of a Prometheus duration such as `5m` or `1h30m`."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def scaled_rules(scale: float = FOR_SCALE) -> dict[str, Any]:
    """alerts/rules.yml with every alert's `for:` divided by `scale` (at least 1 s); nothing else changes."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, math.ceil(prom_seconds(rule['for']) / scale))}s"
    return rules


def prometheus_config(rules: Path, target: str, alertmanager: str, self_address: str) -> dict[str, Any]:
    """deploy/prometheus.yml for loopback: 1 s scrapes and evaluations, the given rules, targets and Alertmanager."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    targets = {"rutter-monitor": target, "prometheus": self_address, "alertmanager": alertmanager}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


def alertmanager_config(webhook_url: Callable[[str], str]) -> dict[str, Any]:
    """alerts/alertmanager.yml with each receiver posting to `webhook_url(receiver)` and 1 s group timers."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8")))
    config["global"]["slack_api_url"] = webhook_url("global")
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        route["group_wait"] = "1s"
        route["group_interval"] = "1s"
        routes.extend(route.get("routes", []))
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack["api_url"] = webhook_url(receiver["name"])
    return config


@overload
async def eventually(check: Callable[[], Awaitable[T]], within: float, what: str, poll: float = ...) -> T: ...
@overload
async def eventually(check: Callable[[], T], within: float, what: str, poll: float = ...) -> T: ...
async def eventually(check: Callable[[], Any], within: float, what: str, poll: float = 0.25) -> Any:
    """The first truthy result of `check` (a function or a coroutine function), polled until `within` seconds
    passed, then the test fails."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(poll)


@dataclass
class Server:
    """A started binary on loopback, its log file, stopped by PID."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


async def start_server(
    name: str, args: list[str], port: int, folder: Path, http: aiohttp.ClientSession, within: float = 15.0
) -> Server:
    """Spawn `args`, then wait for its /-/ready; on failure the process is stopped and its log shown."""
    log_path = folder / f"{name}.log"
    log = log_path.open("wb")
    # A plain Popen, not asyncio's: the server outlives no event loop, and teardown stops it synchronously by PID.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder)  # noqa: ASYNC220
    server = Server(name, f"http://127.0.0.1:{port}", proc, log_path, log)

    async def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{server.logs()}")
        try:
            async with http.get(f"{server.url}/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await eventually(ready, within, f"{name} ready", poll=0.1)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class PromApi:
    """Prometheus's HTTP API, as Grafana and a user call it."""

    url: str
    http: aiohttp.ClientSession

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as resp:
            body = await resp.json()
        return body

    async def query(self, expr: str) -> dict[str, Any]:
        """The instant query's `data`; a parse or evaluation error fails with Prometheus's message."""
        body = await self.get("/api/v1/query", query=expr)
        if body["status"] != "success":
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')} in {expr!r}")
        data: dict[str, Any] = body["data"]
        return data

    async def has_data(self, expr: str) -> bool:
        """Whether the query returns a number: a series (or a scalar) with at least one value that is not NaN.
        A panel of NaNs shows nothing in Grafana, so it counts as empty."""
        data = await self.query(expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            points = [result]
        elif data["resultType"] == "vector":
            points = [series["value"] for series in result]
        else:
            points = [point for series in result for point in series["values"]]
        return any(not math.isnan(float(value)) for _, value in points)

    async def values(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """A vector result as {sorted labels without the name: value}."""
        data = await self.query(expr)
        return {
            tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
            for s in data["result"]
        }


# --- reading alert expressions --------------------------------------------------------------------------------

_SET_OPERATOR = re.compile(r"\s(?:and|or|unless)(?:\s+(?:on|ignoring)\s*\([^()]*\))?\s")
_COMPARISON = re.compile(r"(?:==|!=|>=|<=|>|<)(?:\s*bool\b)?")
_NUMBER = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?\s*", re.IGNORECASE)


def _top_level(expr: str, pattern: re.Pattern[str]) -> list[str]:
    """`expr` split at the matches of `pattern` that sit outside brackets and strings."""
    depth, quote, parts, start, i = 0, "", [], 0, 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            match = pattern.match(expr, i)
            if match:
                parts.append(expr[start:i])
                start = i = match.end()
                continue
        i += 1
    parts.append(expr[start:])
    return [part.strip() for part in parts]


def comparison_operands(expr: str) -> list[str]:
    """The operands of every comparison in an alert expression (`a > 1 and on (x) b >= c` gives a, b and c), set
    operators split first; number literals are dropped. An operand without comparison is kept whole."""
    operands = []
    for part in _top_level(" ".join(expr.split()), _SET_OPERATOR):
        operands += [side for side in _top_level(part, _COMPARISON) if not _NUMBER.fullmatch(side)]
    return operands


def absent_argument(expr: str) -> str | None:
    """`x` for `absent(x)`, else None."""
    match = re.fullmatch(r"absent\((.*)\)", expr.strip(), re.DOTALL)
    return match.group(1).strip() if match else None

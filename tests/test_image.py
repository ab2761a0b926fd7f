"""The image, without a Docker engine: the package is built and installed the way the Dockerfile does it (wheels of
exactly what the build stage copies, then an offline install of those wheels into a fresh venv), and the image's
command runs with the image's environment against the simulator until its own HEALTHCHECK passes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from monitor.clock import SystemClock
from monitor.simulator import Simulator, SimulatorConfig
from tests.harness import free_port
from tests.promstack import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
# Settings of the daemon the caller's environment must not leak into the image's run, nor pip's into the install.
OWN_PREFIXES = ("RUTTER_", "MONITOR_", "SLACK_", "ALERTMANAGER_")
# Variables that would let the run import the repository's sources instead of the installed wheel.
LEAKS = frozenset({"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"})


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the Dockerfile: its instructions, in order."""

    instructions: list[tuple[str, str]]

    def all(self, op: str) -> list[str]:
        return [arg for name, arg in self.instructions if name == op]

    def last(self, op: str) -> str:
        return self.all(op)[-1]


def _stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[Stage] = []
    for line in lines:
        op, _, arg = line.partition(" ")
        if op.upper() == "FROM":
            stages.append(Stage([]))
        if stages:
            stages[-1].instructions.append((op.upper(), arg.strip()))
    return stages


def _in_dir(args: list[str], mapping: dict[str, Path]) -> list[str]:
    """Docker paths of a command's arguments mapped to local folders (`/wheels/x` -> `<tmp>/wheels/x`)."""
    out = []
    for arg in args:
        for docker, local in mapping.items():
            if arg == docker or arg.startswith(docker + "/"):
                arg = str(local) + arg.removeprefix(docker)
            elif "=" in arg and arg.partition("=")[2].startswith(docker):
                key, _, value = arg.partition("=")
                arg = f"{key}={local}{value.removeprefix(docker)}"
        out.append(arg)
    return out


def _pip(venv: Path, run: str, mapping: dict[str, Path], env: dict[str, str], cwd: Path) -> None:
    """Run a Dockerfile `RUN pip ...` line with the venv's pip, its Docker paths mapped to local folders."""
    words = [word for word in shlex.split(run) if not word.startswith("--mount=")]
    assert words[0] == "pip", run
    args = _in_dir(words[1:], mapping)
    expanded = [match for arg in args for match in (sorted(map(str, Path("/").glob(arg[1:]))) if "*" in arg else [arg])]
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", *expanded],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(expanded)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@dataclass(frozen=True, slots=True)
class Image:
    """The image's filesystem stand-in: the venv its stage installed, its /data, its ENV, HEALTHCHECK and CMD."""

    venv: Path
    data: Path
    env: dict[str, str]
    healthcheck: list[str]
    command: list[str]


@pytest.fixture
def image(tmp_path: Path) -> Image:
    """The package built and installed as the Dockerfile does it, into a fresh venv (no editable install)."""
    build, final = _stages()[0], _stages()[-1]
    context = tmp_path / "src"  # the build stage's WORKDIR, holding only what it COPYs from the build context
    context.mkdir()
    for copy in build.all("COPY"):
        *sources, destination = shlex.split(copy)
        assert not any(s.startswith("--") for s in sources), copy
        for source in sources:
            target = context / (Path(source).name if destination.endswith("/") else destination)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheels, data = tmp_path / "wheels", tmp_path / "data"
    data.mkdir()
    online = dict(os.environ)
    [wheel_run] = [run for run in build.all("RUN") if "pip wheel" in run]
    # The local wheel cache may serve the dependencies: drop the flag that turns it off.
    wheel_run = wheel_run.replace("--no-cache-dir", "")
    _pip(venv, wheel_run, {"/wheels": wheels, ".": context}, online, context)
    # The install stage has no index: only the wheels (the machine's own pip settings are kept out too).
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", *OWN_PREFIXES))}
    offline["PIP_CONFIG_FILE"] = os.devnull
    [install] = [run for run in final.all("RUN") if "pip install" in run]
    _pip(venv, install, {"/wheels": wheels}, offline, tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES) and k not in LEAKS}
    for assignment in final.all("ENV"):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = value.replace("/data/", f"{data}/")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    assert final.last("WORKDIR") == "/data"
    healthcheck = json.loads(final.last("HEALTHCHECK").partition(" CMD ")[2])
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import monitor; print(monitor.__file__)"],
        cwd=data, env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv / "lib"), "the package is not the installed wheel"
    return Image(venv, data, env, healthcheck, json.loads(final.last("CMD")))


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """Rutter, simulated, on loopback."""
    sim = await Simulator.start(SimulatorConfig(connections=10, evolve=False, step_interval=None), SystemClock())
    try:
        yield sim
    finally:
        await sim.stop()


async def test_the_image_command_answers_its_healthcheck(image: Image, simulator: Simulator) -> None:
    """The image's CMD, with the image's ENV (its /data in a temporary folder, loopback instead of 0.0.0.0) and the
    simulator's credentials, serves /healthz for the image's own HEALTHCHECK, becomes ready, and stops cleanly on
    SIGTERM."""
    assert image.command == ["rutter-monitor", "run"]
    assert image.env["MONITOR_DATABASE_URL"] == f"sqlite+aiosqlite:///{image.data}/rutter-monitor.db"
    config = simulator.config
    port = free_port()
    env = image.env | {
        "MONITOR_HOST": "127.0.0.1",
        "MONITOR_PORT": str(port),
        "RUTTER_CLIENT_ID": config.client_id,
        "RUTTER_CLIENT_SECRET": config.client_secret,
        "RUTTER_API_URL": simulator.url,
    }
    installed = shutil.which(image.command[0], path=env["PATH"])
    assert installed == str(image.venv / "bin" / image.command[0])
    log_path = image.data.parent / "daemon.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            installed, *image.command[1:], cwd=image.data, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def answers(path: str) -> bool:
                assert proc.returncode is None, log_path.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(lambda: answers("/healthz"), 20, "/healthz answering 200")
            probe = shutil.which(image.healthcheck[0], path=env["PATH"])
            assert probe == str(image.venv / "bin" / image.healthcheck[0])
            check = await asyncio.create_subprocess_exec(probe, *image.healthcheck[1:], env=env, cwd=image.data)
            assert await asyncio.wait_for(check.wait(), 10) == 0
            await eventually(lambda: answers("/readyz"), 20, "/readyz after the first inventory")
        assert (image.data / "rutter-monitor.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

"""A throwaway PostgreSQL cluster for the tests that exercise the PostgreSQL path.

`postgres_url` starts one trust-auth cluster per session (initdb + pg_ctl on a free loopback port, its socket
in the same temp dir) and stops it at the end. `postgres_database_url` gives each test a database of its own,
and `database_url` runs a test twice: on a SQLite file and on PostgreSQL. Without the PostgreSQL binaries the
PostgreSQL cases skip locally and fail in CI, like tests.tools.require_tool."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


def _bindir() -> Path | None:
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], check=True, capture_output=True, text=True).stdout
            candidates.append(Path(out.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists() and (path / "psql").exists():
            return path
    return None


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(f"PostgreSQL not available ({reason}); allowed outside CI only")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Cluster:
    """One initdb'd data directory, run as the `postgres` user when tests run as root (initdb refuses it)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = 0
        self._as_postgres = os.geteuid() == 0

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)

    def init(self) -> None:
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.run(
            str(self.bindir / "initdb"),
            *("-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"),
        )

    def start(self) -> None:
        self.port = _free_port()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(
            str(self.bindir / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "-t", "30", "start"),
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def psql(self, sql: str) -> None:
        self.run(
            str(self.bindir / "psql"),
            *("-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres"),
            *("-v", "ON_ERROR_STOP=1", "-qc", sql),
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[_Cluster]:
    """A running PostgreSQL cluster for the whole session."""
    bindir = _bindir()
    if bindir is None:
        _missing("no initdb/pg_ctl/psql from pg_config --bindir or /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no `postgres` user to run initdb as")
    root = Path(tempfile.mkdtemp(prefix="rutter-pg-"))
    cluster = _Cluster(bindir, root)
    try:
        cluster.init()
        for attempt in range(3):  # the free port can be taken between probing and binding
            try:
                cluster.start()
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    log = root / "log"
                    raise RuntimeError(log.read_text() if log.exists() else "pg_ctl start failed") from None
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: _Cluster) -> str:
    """URL of the session cluster's `postgres` database."""
    return postgres_cluster.url()


@pytest.fixture
def postgres_database_url(postgres_cluster: _Cluster) -> Iterator[str]:
    """URL of an empty database created for this test alone and dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_cluster.psql(f"CREATE DATABASE {name}")
    yield postgres_cluster.url(name)
    postgres_cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database for this test: a SQLite file in tmp_path, then (2nd param) a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url

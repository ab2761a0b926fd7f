"""Alembic migrations: the schema they build is the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from monitor.store import StoreError
from monitor.store.sql import SCHEMA_HEAD, alembic_config, make_engine, normalize_url, open_store
from monitor.store.tables import metadata

ROOT = Path(__file__).resolve().parent.parent


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `alembic` CLI from the repository root as an operator would, the URL in the environment."""
    env = {**os.environ, "MONITOR_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def plain(url: str) -> str:
    """The URL an operator would write: no async driver named."""
    return url.replace("+aiosqlite", "").replace("+asyncpg", "")


async def table_names(url: str) -> set[str]:
    engine = make_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            names: list[str] = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            return set(names)
    finally:
        await engine.dispose()


async def test_cli_upgrade_then_check_reports_no_drift(database_url: str) -> None:
    """`alembic upgrade head` on an empty database, then `alembic check`, finds nothing to generate."""
    upgrade = alembic(plain(database_url), "upgrade", "head")
    assert upgrade.returncode == 0, upgrade.stderr
    check = alembic(plain(database_url), "check")
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    assert await table_names(database_url) >= set(metadata.tables)


async def test_cli_downgrade_and_upgrade_again(database_url: str) -> None:
    """The initial migration can be undone and replayed."""
    assert alembic(plain(database_url), "upgrade", "head").returncode == 0
    downgrade = alembic(plain(database_url), "downgrade", "base")
    assert downgrade.returncode == 0, downgrade.stderr
    assert await table_names(database_url) <= {"alembic_version"}
    assert alembic(plain(database_url), "upgrade", "head").returncode == 0
    assert await table_names(database_url) >= set(metadata.tables)


async def test_store_migrates_at_open_without_drift(database_url: str) -> None:
    """open_store brings an empty database to head, and Alembic then sees no drift from the tables."""
    store = await open_store(database_url)
    await store.close()
    await asyncio.to_thread(command.check, alembic_config(url=database_url))


def test_schema_head_is_the_newest_migration() -> None:
    """SCHEMA_HEAD, which lets a store at head open without Alembic, names the newest migration."""
    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [SCHEMA_HEAD]


async def test_store_behind_head_is_upgraded_at_open(database_url: str) -> None:
    """A store stamped at an older revision is brought to head by open_store."""
    assert alembic(plain(database_url), "upgrade", "0002").returncode == 0
    store = await open_store(database_url)
    await store.close()
    engine = make_engine(normalize_url(database_url))
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all()
    finally:
        await engine.dispose()
    assert versions == [SCHEMA_HEAD]


async def test_store_stamped_by_a_newer_release_is_refused_clearly(database_url: str) -> None:
    """A revision this release doesn't know is a StoreError that says what is wrong, not an Alembic traceback."""
    await (await open_store(database_url)).close()
    engine = make_engine(normalize_url(database_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match=r"migrate failed.*0099"):
        await open_store(database_url)


def test_store_at_head_opens_without_importing_alembic(tmp_path: Path) -> None:
    """Alembic is loaded only to migrate: a restart on a store at head leaves it out of the daemon's memory."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'monitor.db'}"
    script = (
        "import asyncio, sys\n"
        "from monitor.store.sql import open_store\n"
        "async def main():\n"
        "    store = await open_store(sys.argv[1])\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    first = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=60, check=True)
    assert "'alembic.command'" in first.stdout  # a new store: migrated, so Alembic was loaded
    assert "migrated=True" in first.stdout
    again = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=60, check=True)
    assert again.stdout.splitlines()[-1] == "[]"
    assert "migrated=False" in again.stdout  # the log says a restart changed nothing


@pytest.mark.postgres
async def test_replicas_migrating_together_both_succeed(postgres_database_url: str) -> None:
    """Two replicas starting at once on one PostgreSQL both open it: the migration lock serialises them."""
    stores = await asyncio.gather(open_store(postgres_database_url), open_store(postgres_database_url))
    for store in stores:
        await store.ping()
        await store.close()


@pytest.mark.postgres
async def test_connection_ids_sort_bytewise_on_postgresql(postgres_database_url: str) -> None:
    """Connection ids use the "C" collation, so pages follow code-point order whatever the server locale."""
    store = await open_store(postgres_database_url)
    await store.close()
    engine = make_engine(postgres_database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT table_name || '.' || column_name, collation_name FROM information_schema.columns"
                    " WHERE (table_name, column_name)"
                    " IN (('connections', 'id'), ('transitions', 'connection_id'))"
                )
            )
            assert dict(rows.all()) == {"connections.id": "C", "transitions.connection_id": "C"}
    finally:
        await engine.dispose()

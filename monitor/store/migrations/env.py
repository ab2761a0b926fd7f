"""Alembic environment for the packaged migrations.

The daemon runs them from code (monitor.store.sql.SqlStore.migrate) and passes its open connection in
`config.attributes["connection"]`. The `alembic` CLI (root alembic.ini) takes its URL from
`config.attributes["url"]`, else `MONITOR_DATABASE_URL`, else `sqlalchemy.url` in the ini file, else the
daemon's default SQLite file."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from monitor.store.sql import DEFAULT_DATABASE_URL, make_engine, normalize_url
from monitor.store.tables import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or os.environ.get("MONITOR_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url") or DEFAULT_DATABASE_URL
    return normalize_url(str(url))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    elif context.is_offline_mode():
        context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(_run_with_url(_url()))


_main()

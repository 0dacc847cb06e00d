"""Run the Alembic migrations from code (`powernode-hub migrate`, `serve`, the tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from hub.database import to_asyncpg_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def _with_connection(database_url: str, action: str, revision: str) -> None:
    engine = create_async_engine(to_asyncpg_url(database_url))

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(database_url: str, revision: str = "head") -> None:
    await _with_connection(database_url, "upgrade", revision)


async def downgrade(database_url: str, revision: str = "base") -> None:
    await _with_connection(database_url, "downgrade", revision)


async def current_revision(database_url: str) -> str | None:
    engine = create_async_engine(to_asyncpg_url(database_url))
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade_sync(database_url: str) -> None:
    asyncio.run(upgrade(database_url))

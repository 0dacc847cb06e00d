"""asyncpg connections of a hot path's own (DESIGN §8): accept and the children list.

The connections are asyncpg's, kept idle between requests: no ORM session, no pool reset round trip,
no explicit BEGIN/COMMIT. One that failed is closed, not kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

CONNECTIONS = 8


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (`postgresql+asyncpg://…`) as asyncpg takes it."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url


class Connections:
    """Up to `limit` connections at once; idle ones are reused."""

    def __init__(self, database_url: str, *, limit: int = CONNECTIONS):
        self._dsn = asyncpg_dsn(database_url)
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[asyncpg.Connection] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(idle={len(self._idle)})"

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._slots:
            connection = self._idle.pop() if self._idle else await self._connect()
            try:
                yield connection
            except BaseException:
                await discard(connection)
                raise
            self._idle.append(connection)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, server_settings={"application_name": "powernode-hub"})

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await discard(connection)


async def discard(connection: asyncpg.Connection) -> None:
    try:
        await connection.close(timeout=5)
    except Exception:  # a broken connection closes badly; it is dropped either way
        connection.terminate()

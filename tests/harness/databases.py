"""Databases for tests: the real migrations run once into a template; each test gets a clone."""

from __future__ import annotations

import itertools
import os
from typing import Protocol

import asyncpg


class PostgresLike(Protocol):
    def url(self, database: str = "postgres") -> str: ...


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DatabaseFactory:
    """Creates and drops databases on one server, with names unique to this test session."""

    def __init__(self, server: PostgresLike):
        self.server = server
        self._numbers = itertools.count(1)

    def __repr__(self) -> str:
        return f"DatabaseFactory(server={self.server!r})"

    def new_name(self, prefix: str = "t") -> str:
        # The pid keeps two sessions sharing an external server apart.
        return f"{prefix}_{os.getpid()}_{next(self._numbers)}"

    async def create(self, name: str, *, template: str | None = None) -> str:
        sql = f"CREATE DATABASE {_ident(name)}"
        if template is not None:
            sql += f" TEMPLATE {_ident(template)}"
        await self._execute(sql)
        return self.server.url(name)

    async def drop(self, name: str) -> None:
        # FORCE: a test may leave connections behind, e.g. in a server subprocess it killed.
        await self._execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    async def _execute(self, sql: str) -> None:
        connection = await asyncpg.connect(self.server.url("postgres"))
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

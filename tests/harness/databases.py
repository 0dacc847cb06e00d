"""Databases for tests: the real migrations run once into a template; each test gets a clone."""

from __future__ import annotations

import itertools
import os
import secrets
from typing import Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from hub import dbroles


class PostgresLike(Protocol):
    def url(self, database: str = "postgres") -> str: ...


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DatabaseFactory:
    """Creates and drops databases on one server, with names unique to this test session.

    As the hub is deployed: the server's superuser only bootstraps; each database is owned by the
    hub's owner role (no superuser) and its URL logs in as that role (hub/dbroles.py).
    """

    def __init__(self, server: PostgresLike):
        self.server = server
        self._numbers = itertools.count(1)
        self.owner = dbroles.OWNER
        self.owner_password = secrets.token_urlsafe(18)
        self._bootstrapped = False

    def superuser_url(self, name_or_url: str) -> str:
        """The superuser's URL for a database, by name or by one of its other URLs."""
        name = urlsplit(name_or_url).path.lstrip("/") if "://" in name_or_url else name_or_url
        return self.server.url(name)

    def owner_url(self, name: str) -> str:
        parts = urlsplit(self.server.url(name))
        host = parts.netloc.rsplit("@", 1)[-1]
        userinfo = f"{quote(self.owner, safe='')}:{quote(self.owner_password, safe='')}"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))

    def __repr__(self) -> str:
        return f"DatabaseFactory(server={self.server!r})"

    def new_name(self, prefix: str = "t") -> str:
        # The pid keeps two sessions sharing an external server apart.
        return f"{prefix}_{os.getpid()}_{next(self._numbers)}"

    async def create(self, name: str, *, template: str | None = None) -> str:
        """The new database's URL for the hub's owner role."""
        if not self._bootstrapped:
            for statement in dbroles.cluster_statements(owner=self.owner, owner_password=self.owner_password):
                await self._execute(statement)
            self._bootstrapped = True
        sql = f"CREATE DATABASE {_ident(name)} OWNER {_ident(self.owner)}"
        if template is not None:
            sql += f" TEMPLATE {_ident(template)}"
        await self._execute(sql)
        # Database-level grants (TEMP) are not copied from a template: run them on every clone.
        for statement in dbroles.database_statements(database=name, owner=self.owner):
            await self._execute(statement, database=name)
        return self.owner_url(name)

    async def drop(self, name: str) -> None:
        # FORCE: a test may leave connections behind, e.g. in a server subprocess it killed.
        await self._execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    async def _execute(self, sql: str, database: str = "postgres") -> None:
        connection = await asyncpg.connect(self.server.url(database))
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

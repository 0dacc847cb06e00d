"""The session's services: started from the pip packages, or taken from the environment.

`DATABASE_URL`, `REDIS_URL` and `VAULT_ADDR` + `VAULT_TOKEN` point the suite at servers someone
else runs; each is then wrapped so tests see the same small interface (`url(...)`, `addr`, `token`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from hub.embedded.openbao import OpenBaoDevServer
from hub.embedded.postgres import PostgresServer
from hub.embedded.redis import RedisServer


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{path}"))


@dataclass(frozen=True)
class ExternalPostgres:
    """A server from `DATABASE_URL`; its role must be a superuser: like the hub's bootstrap, the
    harness makes the owner role and the replication admin with it (tests/harness/databases.py)."""

    base_url: str

    def __repr__(self) -> str:
        return f"ExternalPostgres(host={urlsplit(self.base_url).hostname!r})"

    def url(self, database: str = "postgres") -> str:
        return _with_path(self.base_url, database)


@dataclass(frozen=True)
class ExternalRedis:
    base_url: str

    def __repr__(self) -> str:
        return f"ExternalRedis(host={urlsplit(self.base_url).hostname!r})"

    def url(self, db: int = 0) -> str:
        return _with_path(self.base_url, str(db))


@dataclass(frozen=True)
class ExternalVault:
    addr: str
    token: str

    def __repr__(self) -> str:
        return f"ExternalVault(addr={self.addr!r})"

    @contextmanager
    def stopped(self) -> Iterator[None]:
        pytest.skip("VAULT_ADDR points at a Vault this suite does not run; it cannot stop it")
        yield


@contextmanager
def postgres(base: Path) -> Iterator[PostgresServer | ExternalPostgres]:
    if url := os.environ.get("DATABASE_URL"):
        yield ExternalPostgres(url)
        return
    server = PostgresServer(base / "postgres").init(durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop(mode="immediate")


@contextmanager
def redis(base: Path) -> Iterator[RedisServer | ExternalRedis]:
    if url := os.environ.get("REDIS_URL"):
        yield ExternalRedis(url)
        return
    server = RedisServer(base / "redis", appendonly=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def openbao(base: Path) -> Iterator[OpenBaoDevServer | ExternalVault]:
    if addr := os.environ.get("VAULT_ADDR"):
        yield ExternalVault(addr, os.environ.get("VAULT_TOKEN", ""))
        return
    server = OpenBaoDevServer(base / "openbao")
    try:
        server.start()
        yield server
    finally:
        server.stop()

"""Fixtures: real PostgreSQL, Redis and OpenBao for the whole session (DESIGN §10).

Session: `harness_dir`, `pg_server`, `redis_server`, `openbao`, `databases`, `migrated_template`.
Per test: `database_url` (a clone of the migrated template, dropped afterwards; the hub's owner
role, no superuser), `superuser_url` (the same database as the bootstrap superuser), `redis_url` (a
Redis db flushed before and after), `settings`, `runtime`, `client`, `run_jobs`, `scratch_dir`,
`pg_pair` (a primary + streaming standby of their own). Set `DATABASE_URL`, `REDIS_URL`,
`VAULT_ADDR` (+ `VAULT_TOKEN`) to use running servers instead of starting them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from arq.worker import Worker

from hub import migrate
from hub.config import DatabaseSettings, RedisSettings, Settings, VaultSettings, primary_db
from hub.embedded.postgres import PostgresServer, make_standby
from hub.main import create_app
from hub.runtime import HubRuntime
from hub.worker import worker_settings
from tests.harness import services
from tests.harness.databases import DatabaseFactory
from tests.harness.processes import kill_9, processes_in

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def harness_dir() -> Iterator[Path]:
    """Everything the session starts lives here, under /tmp so the server user can reach it."""
    base = Path(tempfile.mkdtemp(prefix="pn-test-", dir="/tmp"))
    yield base
    _remove(base)


@pytest.fixture
def scratch_dir(harness_dir: Path) -> Iterator[Path]:
    """A fresh directory for one test's own servers (embedded services, a serve subprocess)."""
    path = harness_dir / f"scratch-{next(_numbers)}"
    path.mkdir()
    yield path
    _remove(path)


def _remove(path: Path) -> None:
    """The last finalizer: a server a failed test left running in `path` goes, by pid."""
    kill_9(processes_in(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(harness_dir: Path) -> Iterator[Any]:
    with services.postgres(harness_dir) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(harness_dir: Path) -> Iterator[Any]:
    with services.redis(harness_dir) as server:
        yield server


@pytest.fixture(scope="session")
def openbao(harness_dir: Path) -> Iterator[Any]:
    """`.addr`, `.token`; `with openbao.stopped():` takes it down for a block (it returns empty)."""
    with services.openbao(harness_dir) as server:
        yield server


@pytest.fixture(scope="session")
def databases(pg_server: Any) -> DatabaseFactory:
    return DatabaseFactory(pg_server)


@pytest.fixture(scope="session")
async def migrated_template(databases: DatabaseFactory) -> AsyncIterator[str]:
    """The name of a database with the real Alembic migrations applied, once per session (or the
    one `PN_TEST_TEMPLATE_DATABASE` names, migrated by whoever runs many sessions: `make mutate`)."""
    if given := os.environ.get("PN_TEST_TEMPLATE_DATABASE"):
        yield given
        return
    name = databases.new_name("template")
    await migrate.upgrade(await databases.create(name))
    yield name
    await databases.drop(name)


@pytest.fixture
async def database_url(databases: DatabaseFactory, migrated_template: str) -> AsyncIterator[str]:
    name = databases.new_name()
    yield await databases.create(name, template=migrated_template)
    await databases.drop(name)


@pytest.fixture
def superuser_url(databases: DatabaseFactory, database_url: str) -> str:
    """The same database as the bootstrap superuser (the hub itself never has this)."""
    return databases.superuser_url(database_url)


@pytest.fixture
async def redis_url(redis_server: Any) -> AsyncIterator[str]:
    # Rotating db numbers keep a straggler from the previous test out of this one's keys.
    url = redis_server.url(db=next(_numbers) % 15 + 1)
    # Its primary-duties queue's database too (hub/config.py `primary_db`).
    clients = [aioredis.Redis.from_url(u) for u in (url, redis_server.url(db=primary_db(url)))]
    for client in clients:
        await client.flushdb()
    try:
        yield url
    finally:
        for client in clients:
            await client.flushdb()
            await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_url: str, openbao: Any, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url, pool_size=5, max_overflow=5),
        redis=RedisSettings(url=redis_url),
        vault=VaultSettings(addr=openbao.addr, token=openbao.token),
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[HubRuntime]:
    opened = await HubRuntime.open(settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def client(settings: Settings, runtime: HubRuntime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        yield http


@dataclass(frozen=True)
class JobsRun:
    complete: int
    failed: int
    retried: int


@pytest.fixture
def run_jobs(settings: Settings) -> Callable[..., Awaitable[JobsRun]]:
    """`await run_jobs()` drains the queue with a burst worker; keyword arguments go to arq.Worker."""

    async def run(**overrides: Any) -> JobsRun:
        totals = [0, 0, 0]
        for primary in (True, False):  # the primary's duties, then the platform queue
            options = {
                **worker_settings(settings, primary=primary),
                "burst": True,
                "poll_delay": 0.02,
                **overrides,
            }
            worker = Worker(**options)
            try:
                await worker.main()
            finally:
                await worker.close()
            for i, count in enumerate((worker.jobs_complete, worker.jobs_failed, worker.jobs_retried)):
                totals[i] += count
        return JobsRun(*totals)

    return run


@dataclass(frozen=True)
class PgPair:
    primary: PostgresServer
    standby: PostgresServer
    slot_name: str
    replication_user: str
    replication_password: str


@pytest.fixture
def pg_pair(scratch_dir: Path) -> Iterator[PgPair]:
    """A primary and a hot standby streaming through a physical slot, always started locally."""
    primary = PostgresServer(scratch_dir / "primary").init(durable=False)
    primary.start()
    standby: PostgresServer | None = None
    try:
        primary.psql("CREATE ROLE pn_repl LOGIN REPLICATION PASSWORD 'pn-repl-test'")
        primary.psql("SELECT pg_create_physical_replication_slot('pn_slot', true)")
        standby = make_standby(primary, "pn_slot", scratch_dir / "standby", "pn_repl", "pn-repl-test")
        yield PgPair(primary, standby, "pn_slot", "pn_repl", "pn-repl-test")
    finally:
        if standby is not None:
            standby.stop(mode="immediate")
        primary.stop(mode="immediate")

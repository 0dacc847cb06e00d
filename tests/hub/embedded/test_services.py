import os
import stat
import subprocess
import sys
import textwrap

import asyncpg
import pytest
import redis.asyncio as aioredis

from hub.embedded.privileges import server_user
from hub.embedded.process import pid_alive
from hub.embedded.services import EmbeddedServices
from tests.harness.processes import kill_9, processes_in


@pytest.fixture
def hub_dir(scratch_dir):
    return scratch_dir / "hub"


@pytest.fixture
def embedded(hub_dir):
    services = EmbeddedServices(hub_dir)
    yield services
    services.stop()


async def write_marker(services, value):
    connection = await asyncpg.connect(services.database_url)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS marker (value text)")
        await connection.execute("INSERT INTO marker VALUES ($1)", value)
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(services.redis_url)
    await client.set("marker", value)
    await client.aclose()


async def read_markers(services):
    connection = await asyncpg.connect(services.database_url)
    try:
        rows = await connection.fetch("SELECT value FROM marker")
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(services.redis_url)
    kept = await client.get("marker")
    await client.aclose()
    return [row["value"] for row in rows], kept


async def test_embedded_default_comes_up(embedded):
    embedded.start()

    connection = await asyncpg.connect(embedded.database_url)
    try:
        user, database, superuser = await connection.fetchrow(
            "SELECT current_user, current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(embedded.redis_url)
    pong = await client.ping()
    await client.aclose()

    assert (user, database, superuser) == ("powernode_hub", "powernode", False)
    assert pong is True


async def test_data_survives_stop_and_start(embedded, hub_dir):
    embedded.start()
    await write_marker(embedded, "before restart")
    embedded.stop()

    with EmbeddedServices(hub_dir) as again:
        assert await read_markers(again) == (["before restart"], b"before restart")


async def test_starts_cleanly_after_kill_9_of_its_servers(embedded, hub_dir):
    embedded.start()
    await write_marker(embedded, "before kill")
    kill_9([embedded.postgres.pid(), embedded.redis.pid()])
    embedded.stop()  # finds nothing alive to stop; lets go of the data dir like a dead hub
    assert (hub_dir / "postgres" / "postmaster.pid").exists()  # stale, as after a crash

    with EmbeddedServices(hub_dir) as again:
        assert await read_markers(again) == (["before kill"], b"before kill")


async def test_adopts_servers_left_running_by_a_killed_hub(hub_dir):
    script = textwrap.dedent(f"""
        import time
        from hub.embedded.services import EmbeddedServices
        EmbeddedServices({str(hub_dir)!r}).start()
        print("up", flush=True)
        time.sleep(600)
    """)
    hub = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert hub.stdout.readline().strip() == "up"
    left_behind = processes_in(hub_dir)
    hub.kill()
    hub.wait()

    with EmbeddedServices(hub_dir) as again:
        assert again.postgres.pid() in left_behind and again.redis.pid() in left_behind
        await write_marker(again, "adopted")
    assert not any(pid_alive(pid) for pid in left_behind)
    assert processes_in(hub_dir) == []


def test_postgres_data_dir_is_private_to_the_server_user(embedded, hub_dir):
    embedded.start()

    info = (hub_dir / "postgres").stat()
    owner = server_user() or (os.getuid(), os.getgid())
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert (info.st_uid, info.st_gid) == owner
    assert stat.S_IMODE((hub_dir / "postgres.json").stat().st_mode) == 0o600


def test_a_second_hub_cannot_take_the_same_data_dir(embedded, hub_dir):
    embedded.start()

    with pytest.raises(RuntimeError, match="in use by another powernode-hub"):
        EmbeddedServices(hub_dir).start()
    assert embedded.postgres.is_running()

"""Issue 11 item 2: a cluster_member's own Redis user, limited to the platform queue.

Mounted against the real Redis with the credential the member was delivered: what a compromised
member would try is refused by Redis itself; its worker can still do its job on the platform queue;
a reissue rotates the password and a revoke deletes the user and drops its connections.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from arq import Worker, func
from arq.connections import RedisSettings, create_pool

from hub.config import primary_db
from hub.jobcodec import ARQ_CODEC
from hub.runtime import PRIMARY_QUEUE, queue_name
from tests.hub.helpers import make_csr
from tests.hub.replication.conftest import CHILDREN, FEDERATION_API

CREDENTIAL = f"{FEDERATION_API}/replication_credential"


async def _member_redis_url(client, child) -> str:
    body = {"acceptance_token": child.token, "contract_version": 1, "csr_pem": make_csr()[1]}
    response = await client.post(f"{FEDERATION_API}/accept", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["cluster_pg"]["redis_url"]


async def _refused(connection: aioredis.Redis, *command: str) -> bool:
    try:
        await connection.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    return False


async def test_the_member_redis_user_refuses_everything_but_the_platform_queue(
    spawn, run_jobs, client, settings
):
    child = await spawn()
    await run_jobs()
    url = await _member_redis_url(client, child)
    assert urlsplit(url).username == child.names.role
    member = aioredis.Redis.from_url(url)
    try:
        assert await member.ping()
        attacks = [
            ("CONFIG", "SET", "dir", "/tmp"),
            ("CONFIG", "GET", "requirepass"),
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("SELECT", str(primary_db(settings.redis_url()))),
            ("ZADD", PRIMARY_QUEUE, "1", "injected"),
            ("SET", "powernode:queue:primary:health-check", "x"),
            ("EVAL", "return redis.call('FLUSHALL')", "0"),
            ("SCRIPT", "LOAD", "return 1"),
            ("MODULE", "LIST"),
            ("DEBUG", "SLEEP", "0"),
            ("ACL", "LIST"),
            ("ACL", "SETUSER", child.names.role, "+@all"),
            ("KEYS", "*"),
            ("SCAN", "0"),
            ("CLIENT", "LIST"),
            ("SHUTDOWN", "NOSAVE"),
            ("SET", "some:other:key", "x"),
            ("SUBSCRIBE", "anything"),
        ]
        allowed = [" ".join(attack) for attack in attacks if not await _refused(member, *attack)]
    finally:
        await member.aclose()
    assert allowed == []


async def test_the_member_worker_runs_platform_jobs_with_its_own_user(spawn, run_jobs, client):
    child = await spawn()
    await run_jobs()
    url = await _member_redis_url(client, child)
    ran: list[str] = []

    async def platform_job(ctx: dict, *, value: str) -> str:
        ran.append(value)
        return value

    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue_name(), **ARQ_CODEC)
    worker = Worker(
        functions=[func(platform_job, name="platform_job")],
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=queue_name(),
        burst=True,
        poll_delay=0.02,
        handle_signals=False,
        **ARQ_CODEC,
    )
    try:
        job = await pool.enqueue_job("platform_job", value="done")
        assert job is not None
        await worker.main()
        assert await job.result(timeout=30) == "done"
    finally:
        await worker.close()
        await pool.aclose()
    assert ran == ["done"]


async def test_reissue_rotates_the_member_redis_password_and_revoke_deletes_the_user(
    spawn, run_jobs, client, operator
):
    child = await spawn()
    await run_jobs()
    old_url = await _member_redis_url(client, child)

    reissued = await client.post(f"{CHILDREN}/{child.id}/replication/reissue", headers=operator)
    fetched = await client.get(CREDENTIAL, headers=child.peer_headers)
    assert reissued.status_code == 200 and fetched.status_code == 200, fetched.text
    new_url = fetched.json()["data"]["redis_url"]
    assert new_url != old_url
    with pytest.raises(redis.exceptions.AuthenticationError):
        await _ping(old_url)
    assert await _ping(new_url)

    open_connection = aioredis.Redis.from_url(new_url, single_connection_client=True)
    assert await open_connection.ping()
    revoked = await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator, json={"reason": "gone"})
    ran = await run_jobs()
    assert revoked.status_code == 200 and ran.failed == 0
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError)):
        await open_connection.execute_command("PING")  # Redis dropped the deleted user's connection
    await open_connection.aclose()
    with pytest.raises(redis.exceptions.AuthenticationError):
        await _ping(new_url)


async def _ping(url: str) -> bool:
    connection = aioredis.Redis.from_url(url)
    try:
        return bool(await asyncio.wait_for(connection.ping(), 10))
    finally:
        await connection.aclose()

"""The fixtures every other test relies on do what their names say, against the real services."""

import hvac
import pytest
import redis.asyncio as aioredis
import requests

from hub.runtime import queue_name


async def test_client_reaches_the_app_with_a_ready_database_and_redis(client):
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["data"]["checks"] == {"database": True, "redis": True, "disk": True}


async def record(ctx, *, value):
    await ctx["redis"].set("recorded", value)


async def test_run_jobs_drains_the_queue(runtime, run_jobs, redis_url):
    await runtime.redis.enqueue_job("record", value="done", _queue_name=queue_name())

    ran = await run_jobs(functions=[record])

    client = aioredis.Redis.from_url(redis_url)
    assert await client.get("recorded") == b"done"
    assert await client.zcard(queue_name()) == 0
    await client.aclose()
    assert (ran.complete, ran.failed) == (1, 0)


def test_openbao_can_be_stopped_and_comes_back_empty(openbao):
    vault = hvac.Client(url=openbao.addr, token=openbao.token)
    vault.secrets.kv.v2.create_or_update_secret(path="harness", secret={"k": "v"})

    with openbao.stopped():
        with pytest.raises(requests.ConnectionError):
            vault.sys.is_sealed()

    assert vault.sys.is_sealed() is False
    with pytest.raises(hvac.exceptions.InvalidPath):  # dev mode: secrets live in memory
        vault.secrets.kv.v2.read_secret_version(path="harness", raise_on_deleted_version=False)

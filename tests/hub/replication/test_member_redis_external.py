"""Issue 11 item 2 against a Redis whose hub user is itself restricted, as the README tells an
operator of an external Redis to set it up (not the all-powerful `default` user)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.hub.helpers import make_csr
from tests.hub.replication.conftest import CHILDREN, FEDERATION_API

# The README's example for the hub's own Redis user.
HUB_USER_RULES = (
    "~* -@all +@read +@write +@keyspace +@transaction +@sortedset +@string +@connection +info "
    "+select +acl|setuser +acl|deluser +acl|save"
).split()


@pytest.fixture
async def redis_url(redis_url: str) -> AsyncIterator[str]:
    """The same Redis database, reached as a hub user with only what the README lists."""
    admin = aioredis.Redis.from_url(redis_url)
    user, password = f"pn_hub_{os.getpid()}", secrets.token_urlsafe(18)
    await admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *HUB_USER_RULES)
    parts = urlsplit(redis_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    try:
        yield urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


async def test_a_restricted_hub_user_makes_and_deletes_the_member_user(spawn, run_jobs, client, operator):
    child = await spawn()
    await run_jobs()
    body = {"acceptance_token": child.token, "contract_version": 1, "csr_pem": make_csr()[1]}
    accepted = await client.post(f"{FEDERATION_API}/accept", json=body)
    member_url = accepted.json()["data"]["cluster_pg"]["redis_url"]

    member = aioredis.Redis.from_url(member_url)
    try:
        assert await member.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            await member.execute_command("CONFIG", "GET", "*")
    finally:
        await member.aclose()

    await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator, json={"reason": "gone"})
    ran = await run_jobs()
    assert ran.failed == 0
    gone = aioredis.Redis.from_url(member_url)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await gone.ping()
    finally:
        await gone.aclose()

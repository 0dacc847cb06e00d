"""Revoking a cluster_member, or letting its token expire unaccepted, leaves nothing on the primary."""

import uuid

import redis.asyncio as aioredis

from hub.replication import jobs
from tests.hub.replication.conftest import CHILDREN, cluster_pg, read_secret, roles_named, slots_named


async def leftovers(primary, vault, child):
    names = child.names
    return (
        await slots_named(primary, names.slot),
        await roles_named(primary, names.role),
        read_secret(vault, names),
    )


async def test_revoke_drops_the_slot_the_role_and_the_secret(
    spawn, run_jobs, client, operator, primary, vault
):
    child = await spawn()
    await run_jobs()
    assert (await leftovers(primary, vault, child))[:2] == (1, 1)

    revoked = await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator, json={"reason": "gone"})
    ran = await run_jobs()

    assert revoked.status_code == 200, revoked.text
    assert ran.failed == 0
    assert await leftovers(primary, vault, child) == (0, 0, None)
    block = await cluster_pg(primary, child)
    assert block["state"] == "revoked" and block["torn_down_at"]


async def test_teardown_twice_is_harmless(spawn, run_jobs, runtime, client, operator, primary, vault):
    child = await spawn()
    await run_jobs()
    await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator)
    await run_jobs()

    again = await jobs.cluster_member_pg_replica_teardown({"runtime": runtime}, peer_id=str(child.id))

    assert again["state"] == "revoked"
    assert await leftovers(primary, vault, child) == (0, 0, None)


async def test_a_lost_teardown_job_is_enqueued_again_by_the_janitor(
    spawn, run_jobs, runtime, client, operator, primary, vault, redis_url
):
    child = await spawn()
    await run_jobs()
    await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator)
    queue = aioredis.Redis.from_url(redis_url)
    await queue.flushdb()  # the teardown job is lost
    await queue.aclose()

    swept = await jobs.replication_slot_janitor({"runtime": runtime})
    await run_jobs()

    assert swept["teardowns"] == 1
    assert await leftovers(primary, vault, child) == (0, 0, None)
    assert (await jobs.replication_slot_janitor({"runtime": runtime}))["teardowns"] == 0


async def test_a_member_whose_token_expired_unaccepted_is_torn_down(
    spawn, run_jobs, runtime, client, operator, primary, vault
):
    child = await spawn()
    live = await spawn()
    await run_jobs()
    await primary.execute(
        "UPDATE acceptance_token SET expires_at = now() - interval '1 second' WHERE peer_id = $1", child.id
    )

    swept = await jobs.replication_slot_janitor({"runtime": runtime})
    await run_jobs()
    retry = await client.post(f"{CHILDREN}/{child.id}/replication/retry", headers=operator)

    assert swept["teardowns"] == 1
    assert await leftovers(primary, vault, child) == (0, 0, None)
    assert (await cluster_pg(primary, child))["state"] == "expired"
    assert (await leftovers(primary, vault, live))[:2] == (1, 1)
    assert (retry.status_code, retry.json()["code"]) == (409, "TOKEN_EXPIRED")


async def test_the_operator_calls_refuse_what_they_cannot_act_on(spawn, client, operator, runtime):
    managed = await spawn("managed_child")
    revoked = await spawn()
    await client.post(f"{CHILDREN}/{revoked.id}/revoke", headers=operator)
    member = await spawn()

    for action in ("retry", "reissue"):
        unknown = await client.post(f"{CHILDREN}/{uuid.uuid4()}/replication/{action}", headers=operator)
        wrong_mode = await client.post(f"{CHILDREN}/{managed.id}/replication/{action}", headers=operator)
        gone = await client.post(f"{CHILDREN}/{revoked.id}/replication/{action}", headers=operator)
        anonymous = await client.post(f"{CHILDREN}/{member.id}/replication/{action}")
        assert unknown.status_code == 404
        assert (wrong_mode.status_code, wrong_mode.json()["code"]) == (409, "NOT_CLUSTER_MEMBER")
        assert (gone.status_code, gone.json()["code"]) == (409, "REVOKED")
        assert anonymous.status_code == 401
    not_ready = await client.post(f"{CHILDREN}/{member.id}/replication/reissue", headers=operator)
    assert (not_ready.status_code, not_ready.json()["code"]) == (409, "NOT_READY")

"""Issue 12 #3, #4, #6 and issue 11 #6 with the faults injected for real: a worker killed -9 in
the middle of a replica setup, Redis stopped while a spawn commits, a peer that refuses connections.

Every test here runs on its own Redis (so it can be stopped) and with a short outbox lease.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import pytest

from hub.config import FederationSettings, OutboxSettings, Settings
from hub.embedded.process import free_port
from hub.embedded.redis import RedisServer
from hub.federation.findings.jobs import federation_findings_sweep
from hub.localhub import hub_command, hub_env
from hub.outbox.jobs import relay_loop
from hub.replication.credentials import PREFIX, ReplicaNames
from hub.replication.jobs import replication_slot_janitor
from tests.hub.helpers import make_csr
from tests.hub.replication.conftest import (
    CHILDREN,
    FEDERATION_API,
    cluster_pg,
    drop_replica,
    read_secret,
    roles_named,
    slots_named,
)

API = "/api/v1"
LEASE = 2.0


@pytest.fixture
def own_redis(scratch_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(scratch_dir / "redis", appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(own_redis: RedisServer) -> str:
    return own_redis.url(0)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "federation": FederationSettings(trusted_proxies=["127.0.0.1/32"], stuck_seconds=0.1),
            "outbox": OutboxSettings(lease_seconds=LEASE, poll_seconds=0.2, failing_after_attempts=1),
        }
    )


async def until(check: Any, timeout: float = 60.0) -> Any:
    """The first truthy value of `await check()` within `timeout` seconds; fails otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"{check} never held"
        await asyncio.sleep(0.2)


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """`powernode-hub worker` as its own process group, on this test's database, Redis and Vault."""
    command = [*hub_command(), "worker", "--metrics-port", str(free_port())]
    return subprocess.Popen(
        command,
        env=env_of(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def env_of(settings: Settings) -> dict[str, str]:
    return hub_env(
        {
            "DATABASE_URL": settings.database_url(),
            "REDIS_URL": settings.redis_url(),
            "VAULT_ADDR": str(settings.vault.addr),
            "VAULT_TOKEN": settings.vault.token.get_secret_value() if settings.vault.token else "",
            "POWERNODE_DATA_DIR": str(settings.data_dir),
            "POWERNODE_OUTBOX_LEASE_SECONDS": str(LEASE),
            "POWERNODE_OUTBOX_POLL_SECONDS": "0.2",
            "POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": "3600",
        }
    )


def kill_9(worker: subprocess.Popen[bytes]) -> None:
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(30)


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            kill_9(worker)


async def open_entries(primary: asyncpg.Connection, peer_id: Any) -> int:
    return await primary.fetchval(
        "SELECT count(*) FROM job_outbox WHERE done_at IS NULL AND kwargs->>'peer_id' = $1", str(peer_id)
    )


async def test_a_setup_whose_worker_was_killed_resumes_within_seconds(
    spawn, settings, primary, vault, database_url
):
    child = await spawn()  # the setup is recorded with the spawn and dispatched at once
    lock = await asyncpg.connect(database_url)  # the member's lock: the setup will wait inside
    hold = lock.transaction()
    await hold.start()
    await lock.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{PREFIX}{child.id}")
    first = start_worker(settings)
    try:
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        await until(lambda: primary.fetchval(waiting))
        kill_9(first)  # in the middle of the setup, holding arq's lock on its job
    finally:
        stop(first)
        await hold.rollback()
        await lock.close()
    second = start_worker(settings)
    try:
        # arq would keep the killed job locked for its whole timeout (5 min); the outbox lease is 2 s.
        ready = await until(lambda: _ready(primary, child), timeout=45)
        await until(lambda: _closed(primary, child))  # the job closes its entry once it returned
    finally:
        stop(second)

    assert ready["state"] == "ready"
    assert await slots_named(primary, child.names.slot) == 1
    assert await roles_named(primary, child.names.role) == 1
    assert read_secret(vault, child.names)["username"] == child.names.role


async def _closed(primary: asyncpg.Connection, child: Any) -> bool:
    return await open_entries(primary, child.id) == 0


async def _ready(primary: asyncpg.Connection, child: Any) -> dict[str, Any] | None:
    block = await cluster_pg(primary, child)
    return block if block and block.get("state") == "ready" else None


async def test_a_spawn_while_redis_is_down_is_set_up_once_it_is_back(
    spawn, own_redis, runtime, primary, run_jobs
):
    own_redis.stop()
    child = await spawn()  # answered: the setup waits in the outbox
    waiting = await open_entries(primary, child.id)
    relay = asyncio.create_task(relay_loop(runtime))
    try:
        await asyncio.sleep(0.5)  # the relay fails against the stopped Redis, and carries on
        own_redis.start()
        dispatched = "SELECT attempts FROM job_outbox WHERE kwargs->>'peer_id' = $1"
        await until(lambda: primary.fetchval(dispatched, str(child.id)))
    finally:
        relay.cancel()
    await run_jobs()

    assert waiting == 1
    assert (await cluster_pg(primary, child))["state"] == "ready"
    assert await slots_named(primary, child.names.slot) == 1
    assert await open_entries(primary, child.id) == 0


async def test_a_grant_revoke_the_child_cannot_hear_is_retried_with_findings(
    spawn, client, operator, runtime, primary, run_jobs
):
    """Issue 11 #6 and 12 #6: the child refuses connections; the notice waits with a finding."""
    child = await spawn("managed_child")
    accepted = await client.post(
        f"{FEDERATION_API}/accept",
        json={"acceptance_token": child.token, "contract_version": 1, "csr_pem": make_csr()[1]},
    )
    assert accepted.status_code == 200, accepted.text
    closed = f"https://127.0.0.1:{free_port()}"  # nothing listens: every call is refused
    await primary.execute(
        "UPDATE federation_peer SET status = 'active', endpoints = $2::jsonb, "
        "capabilities = jsonb_build_object('federation_ca_pem', $3::text) WHERE id = $1",
        child.id,
        json.dumps([{"scope": "federation", "url": closed}]),
        runtime.ca.chain_pem,
    )
    grant_id = accepted.json()["data"]["grant"]["id"]

    revoked = await client.post(f"{API}/system/federation/grants/{grant_id}/revoke", headers=operator)
    await run_jobs()
    await federation_findings_sweep({"runtime": runtime})

    assert revoked.status_code == 200
    undelivered = await primary.fetchrow(
        "SELECT message FROM finding WHERE kind = 'grant_revoke_undelivered' AND resolved_at IS NULL"
    )
    assert "has not yet been told" in undelivered["message"]
    failing = await primary.fetchrow(
        "SELECT message, peer_id FROM finding WHERE kind = 'outbox_entry_failing' AND resolved_at IS NULL"
    )
    assert failing["peer_id"] == child.id and "federation_grant_revoke_notice" in failing["message"]
    entry = await primary.fetchrow(
        "SELECT attempts, done_at, available_at > now() AS later FROM job_outbox WHERE job = $1",
        "federation_grant_revoke_notice",
    )
    assert entry["attempts"] == 1 and entry["done_at"] is None and entry["later"]


async def test_stuck_children_get_findings_that_say_what_to_do(spawn, client, runtime, primary):
    """12 #6: accepted and never enrolled; a cluster_member whose setup never ran."""
    member = await spawn()  # nobody runs its setup
    stuck = await spawn("autonomous_peer")
    accepted = await client.post(
        f"{FEDERATION_API}/accept", json={"acceptance_token": stuck.token, "contract_version": 1}
    )
    assert accepted.status_code == 200
    await primary.execute("UPDATE federation_peer SET accepted_at = now() - interval '1 hour'")
    await primary.execute("UPDATE federation_peer SET created_at = now() - interval '1 hour'")

    await federation_findings_sweep({"runtime": runtime})
    await replication_slot_janitor({"runtime": runtime})

    findings = {
        row["kind"]: row
        for row in await primary.fetch("SELECT kind, peer_id, message FROM finding WHERE resolved_at IS NULL")
    }
    never = findings["peer_accepted_never_enrolled"]
    assert never["peer_id"] == stuck.id and f"{CHILDREN}/{stuck.id}/rotate_token" in never["message"]
    stalled = findings["cluster_pg_setup_stalled"]
    assert stalled["peer_id"] == member.id and "replication/retry" in stalled["message"]


# A spawn of a managed_child, in its own process, up to the moment after it stored the bearer the
# parent will hold and before its own commit: there it is killed.
SPAWN_UNTIL_THE_BEARER_IS_STORED = """
import asyncio
from hub.config import Settings
from hub.federation.accept import service
from hub.runtime import HubRuntime

async def main():
    runtime = await HubRuntime.open(Settings())
    prepared = await service.prepare_held_grant(runtime)
    print(prepared["held_grant_id"], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_spawn_killed_after_storing_its_bearer_leaves_no_secret(
    settings, runtime, vault, primary, run_jobs
):
    """12 #3: kill -9 between the secret store and the spawn's commit; the orphan goes by itself."""
    spawning = subprocess.Popen(
        [sys.executable, "-c", SPAWN_UNTIL_THE_BEARER_IS_STORED],
        env=env_of(settings),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert spawning.stdout is not None
        grant_id = (await asyncio.to_thread(spawning.stdout.readline)).decode().strip()
        stored = bearer_in(vault, grant_id)
    finally:
        kill_9(spawning)
    relay = asyncio.create_task(relay_loop(runtime))
    try:  # due one lease after it was recorded
        dispatched = "SELECT attempts FROM job_outbox WHERE kwargs->>'grant_id' = $1"
        await until(lambda: primary.fetchval(dispatched, grant_id))
    finally:
        relay.cancel()
    await run_jobs()

    assert stored is not None and stored["bearer"].startswith("pngb_")
    assert bearer_in(vault, grant_id) is None
    assert await primary.fetchval("SELECT count(*) FROM job_outbox WHERE done_at IS NULL") == 0


def bearer_in(vault: Any, grant_id: str) -> dict[str, Any] | None:
    try:
        response = vault.secrets.kv.v2.read_secret_version(
            path=f"federation_grant_bearer/{grant_id}", raise_on_deleted_version=False
        )
    except hvac.exceptions.InvalidPath:
        return None
    return response["data"]["data"]


# A cluster_member spawn with a node, in its own process: it commits, then hangs on a frozen Redis
# before its provisioner runs; there it is killed.
SPAWN_A_MEMBER_WITH_A_NODE = """
import asyncio, sys
from hub.config import Settings
from hub.runtime import HubRuntime
from hub.spawn import service
from hub.spawn.schemas import SpawnRequest

async def main():
    runtime = await HubRuntime.open(Settings())
    print("open", flush=True)
    sys.stdin.readline()
    request = SpawnRequest.model_validate({
        "spawn_mode": "cluster_member",
        "parent_url": "http://hub.test",
        "spawn_target": {"template_id": "powernode-hub-cluster-member"},
    })
    async with runtime.sessionmaker() as session:
        await service.spawn(session, runtime=runtime, request=request, actor="test")
    print("spawned", flush=True)

asyncio.run(main())
"""


async def test_a_spawn_killed_between_its_commit_and_its_provisioner_converges(
    settings, own_redis, runtime, primary, vault, run_jobs
):
    """12 #3: Redis frozen (SIGSTOP) right after the spawn committed, the process killed -9 there;
    once Redis is back the node is provisioned with a new token and the replica set up, once."""
    spawning = subprocess.Popen(
        [sys.executable, "-c", SPAWN_A_MEMBER_WITH_A_NODE],
        env=env_of(settings) | {"POWERNODE_PROVISIONER": "manual"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    redis_pid = own_redis.pid()
    assert spawning.stdin is not None and spawning.stdout is not None and redis_pid is not None
    try:
        assert (await asyncio.to_thread(spawning.stdout.readline)).strip() == b"open"
        os.kill(redis_pid, signal.SIGSTOP)
        spawning.stdin.write(b"go\n")
        spawning.stdin.flush()
        peer = await until(lambda: primary.fetchrow("SELECT id, node_instance_id FROM federation_peer"))
    finally:
        kill_9(spawning)
        os.kill(redis_pid, signal.SIGCONT)
    first_token = await primary.fetchval("SELECT id FROM acceptance_token WHERE peer_id = $1", peer["id"])
    names = ReplicaNames.of(peer["id"])
    try:
        relay = asyncio.create_task(relay_loop(runtime))
        try:
            node_state = "SELECT state FROM node_instance WHERE id = $1 AND state <> 'pending'"
            while not await primary.fetchval(node_state, peer["node_instance_id"]):
                await run_jobs()
                await asyncio.sleep(0.2)
            await until(lambda: primary.fetchval("SELECT count(*) = 0 FROM job_outbox WHERE done_at IS NULL"))
        finally:
            relay.cancel()

        tokens = await primary.fetch(
            "SELECT id, superseded_at FROM acceptance_token WHERE peer_id = $1", peer["id"]
        )
        block = json.loads(await primary.fetchval("SELECT metadata->'cluster_pg' FROM federation_peer"))
        assert await primary.fetchval(node_state, peer["node_instance_id"]) == "staged"
        assert [t["id"] for t in tokens if t["superseded_at"] is None] != [first_token]
        assert len([t for t in tokens if t["superseded_at"] is None]) == 1
        assert block["state"] == "ready"
        assert await slots_named(primary, names.slot) == 1
        assert await roles_named(primary, names.role) == 1
        assert read_secret(vault, names) is not None
    finally:
        await drop_replica(primary, names)

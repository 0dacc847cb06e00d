"""The replica setup job on the real primary and OpenBao: what it makes, and that every re-run agrees."""

import asyncio
import base64
import dataclasses
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest
from arq import Retry

from hub.config import ReplicationSettings
from hub.dbroles import scram_verifier
from hub.replication import jobs
from hub.replication.credentials import Credential
from tests.hub.replication.conftest import (
    CHILDREN,
    cluster_pg,
    open_setup_findings,
    read_secret,
    roles_named,
    run_setup,
    slots_named,
)


async def replication_login(database_url: str, username: str, password: str) -> None:
    """Log in as a standby would (a walsender connection), or raise."""
    parts = urlsplit(database_url)
    connection = await asyncpg.connect(
        host=parts.hostname,
        port=parts.port,
        user=username,
        password=password,
        database="replication",
        server_settings={"replication": "true"},
    )
    try:
        await connection.execute("IDENTIFY_SYSTEM")
    finally:
        await connection.close()


async def test_setup_makes_slot_role_and_secret_then_marks_the_child_ready(
    spawn, run_jobs, primary, vault, database_url
):
    child = await spawn()

    ran = await run_jobs()

    assert ran.failed == 0
    names = child.names
    slot = await primary.fetchrow(
        "SELECT slot_type, temporary, restart_lsn FROM pg_replication_slots WHERE slot_name = $1", names.slot
    )
    assert slot["slot_type"] == "physical" and slot["temporary"] is False
    assert slot["restart_lsn"] is not None  # WAL reserved from creation on, not from the first connection
    role = await primary.fetchrow(
        "SELECT rolcanlogin, rolreplication, rolsuper, rolcreaterole, rolvaliduntil, rolpassword "
        "FROM pg_authid WHERE rolname = $1",
        names.role,
    )
    assert role["rolcanlogin"] and role["rolreplication"]
    assert not role["rolsuper"] and not role["rolcreaterole"]
    now = datetime.now(UTC)
    assert now + timedelta(days=29) < role["rolvaliduntil"] <= now + timedelta(days=30)
    secret = read_secret(vault, names)
    assert secret["username"] == names.role
    assert len(base64.b64decode(secret["password"], validate=True)) == 32
    assert role["rolvaliduntil"] == datetime.fromisoformat(secret["expires_at"])
    assert role["rolpassword"].startswith("SCRAM-SHA-256$4096:")  # only the verifier reached the server
    await replication_login(database_url, names.role, secret["password"])
    block = await cluster_pg(primary, child)
    assert block == {
        "state": "ready",
        "slot_name": f"powernode_repl_{child.id.hex}",
        "primary_host": "127.0.0.1",
        "primary_port": urlsplit(database_url).port,
        "credential_id": str(child.id),
        "username": f"powernode_repl_{child.id.hex[:16]}",
        "database": urlsplit(database_url).path.lstrip("/"),
        "prepared_at": block["prepared_at"],
        "expires_at": secret["expires_at"],
    }
    assert now - timedelta(minutes=1) < datetime.fromisoformat(block["prepared_at"]) <= datetime.now(UTC)


async def test_the_advertised_primary_comes_from_the_replication_settings(spawn, runtime, primary):
    child = await spawn()
    advertised = runtime.settings.model_copy(
        update={"replication": ReplicationSettings(primary_host="10.20.0.1", primary_port=6432)}
    )

    await run_setup(dataclasses.replace(runtime, settings=advertised), child)

    block = await cluster_pg(primary, child)
    assert (block["state"], block["primary_host"], block["primary_port"]) == ("ready", "10.20.0.1", 6432)


async def _inventory(primary, vault, child):
    names = child.names
    slots, roles = await slots_named(primary, names.slot), await roles_named(primary, names.role)
    versions = vault.secrets.kv.v2.read_secret_metadata(path=names.secret_path)["data"]["current_version"]
    return slots, roles, versions, read_secret(vault, names)


async def test_running_it_again_changes_nothing(spawn, run_jobs, runtime, primary, vault):
    child = await spawn()
    await run_jobs()
    before = await _inventory(primary, vault, child)
    block_before = await cluster_pg(primary, child)

    await run_setup(runtime, child)

    assert await _inventory(primary, vault, child) == before
    assert before[:3] == (1, 1, 1)
    block_after = await cluster_pg(primary, child)
    assert {**block_after, "prepared_at": None} == {**block_before, "prepared_at": None}


async def test_two_runs_at_once_make_one_slot_one_role_one_secret(
    spawn, runtime, primary, vault, database_url
):
    child = await spawn()

    results = await asyncio.gather(run_setup(runtime, child), run_setup(runtime, child))

    assert [r["state"] for r in results] == ["ready", "ready"]
    slots, roles, versions, secret = await _inventory(primary, vault, child)
    assert (slots, roles, versions) == (1, 1, 1)
    await replication_login(database_url, child.names.role, secret["password"])


async def _restart_lsn(primary, slot):
    return await primary.fetchval(
        "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot
    )


async def test_a_run_killed_after_the_slot_and_secret_is_finished_by_the_next(
    spawn, runtime, primary, vault, database_url
):
    child = await spawn()
    names = child.names
    await primary.execute("SELECT pg_create_physical_replication_slot($1, true)", names.slot)
    restart_lsn = await _restart_lsn(primary, names.slot)
    left_behind = Credential.new(username=names.role, ttl_days=30)
    vault.secrets.kv.v2.create_or_update_secret(path=names.secret_path, secret=left_behind.to_secret())

    await run_setup(runtime, child)

    assert (await cluster_pg(primary, child))["expires_at"] == left_behind.expires_at.isoformat()
    assert await _restart_lsn(primary, names.slot) == restart_lsn
    await replication_login(database_url, names.role, left_behind.password)


async def test_a_role_left_with_another_password_is_set_to_the_stored_one(
    spawn, runtime, primary, vault, database_url
):
    child = await spawn()
    # As an earlier run left it: made through the replication admin's function, another password.
    await primary.execute(
        "SELECT powernode_admin.ensure_member_role($1, $2, now() + interval '1 day')",
        child.names.role,
        scram_verifier("stale-password"),
    )

    await run_setup(runtime, child)

    secret = read_secret(vault, child.names)
    await replication_login(database_url, child.names.role, secret["password"])
    with pytest.raises(asyncpg.InvalidPasswordError):
        await replication_login(database_url, child.names.role, "stale-password")


async def test_vault_down_means_error_and_a_finding_until_a_retry_succeeds(
    spawn, runtime, openbao, primary, client, operator, run_jobs
):
    child = await spawn()

    with openbao.stopped():
        with pytest.raises(Retry):
            await run_setup(runtime, child)
        failed = await cluster_pg(primary, child)
        finding = await primary.fetchrow(
            "SELECT peer_id, severity, message FROM finding "
            "WHERE kind = 'cluster_pg_setup_failed' AND subject = $1 AND resolved_at IS NULL",
            str(child.id),
        )
        last_try = await run_setup(runtime, child, job_try=jobs.MAX_TRIES)  # gives up: no Retry
    retry = await client.post(f"{CHILDREN}/{child.id}/replication/retry", headers=operator)
    ran = await run_jobs()

    assert failed["state"] == "error" and failed["failed_at"]
    assert failed["reason"].startswith(f"storing the credential at {child.names.secret_path} failed")
    assert "unavailable" in failed["reason"]
    assert finding["peer_id"] == child.id and finding["severity"] == "error"
    assert last_try["state"] == "error"
    assert retry.status_code == 202, retry.text
    assert retry.json()["data"]["cluster_pg"]["state"] == "error"
    assert retry.json()["data"]["job_id"].startswith("outbox:")
    assert ran.failed == 0
    ready = await cluster_pg(primary, child)
    assert ready["state"] == "ready" and "reason" not in ready and "failed_at" not in ready
    assert await open_setup_findings(primary) == 0


async def test_a_non_cluster_member_gets_no_replica(spawn, runtime, primary):
    child = await spawn("managed_child")

    assert await run_setup(runtime, child) is None

    assert await slots_named(primary, child.names.slot) == 0
    assert await cluster_pg(primary, child) is None


@pytest.mark.parametrize("after", [0.005, 0.01, 0.02, 0.04])  # before, inside, after the first commit
async def test_a_run_cancelled_anywhere_is_finished_by_the_next(
    spawn, runtime, primary, vault, database_url, after
):
    child = await spawn()
    interrupted = asyncio.create_task(run_setup(runtime, child))
    await asyncio.sleep(after)
    interrupted.cancel()
    await asyncio.gather(interrupted, return_exceptions=True)

    await run_setup(runtime, child)

    slots, roles, _, secret = await _inventory(primary, vault, child)
    assert (slots, roles) == (1, 1)
    assert (await cluster_pg(primary, child))["state"] == "ready"
    await replication_login(database_url, child.names.role, secret["password"])

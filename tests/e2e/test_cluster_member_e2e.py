"""cluster_member end to end: a streaming standby of the parent's primary, a hub on the parent's
database and Redis, revoke dropping slot and role, and operator-driven promotion."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from hub.config import Settings
from hub.embedded.postgres import PostgresServer
from hub.embedded.process import pid_alive
from hub.federation import bootstrap, member
from shared_contract.first_run import FirstRunResult
from tests.e2e.hubs import Hub, halt_node, hub_env

pytestmark = pytest.mark.e2e

TEMPLATE = "powernode-hub-cluster-member"


def member_files(child: dict) -> tuple[Path, FirstRunResult]:
    node = Path(child["node_instance"]["details"]["work_dir"])
    return node, FirstRunResult.read(node / "data" / "agent" / "first-run-result.json")


def standby_url(parent: Hub, result: FirstRunResult) -> str:
    primary = PostgresServer(parent.data_dir / "postgres")
    assert result.standby is not None
    return primary.url("powernode").replace(f":{primary.port}/", f":{result.standby.port}/")


async def query(url: str, sql: str, *args: object) -> object:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    binary = str(Path(sys.executable).with_name("powernode-child-agent"))
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, env=hub_env(), timeout=120, stdin=subprocess.DEVNULL
    )


async def test_member_streams_runs_on_the_parents_database_and_revoke_drops_its_slot(parent):
    child = parent.wait_for(parent.spawn("cluster_member", TEMPLATE)["child"]["id"], "active")
    node, result = member_files(child)
    primary_url = PostgresServer(parent.data_dir / "postgres").url("powernode")
    pg = child["metadata"]["cluster_pg"]
    assert pg["state"] == "ready" and pg["delivered_at"] and "password" not in pg

    marker = secrets.token_hex(8)
    await query(primary_url, "CREATE TABLE IF NOT EXISTS e2e_marker (marker text)")
    await query(primary_url, "INSERT INTO e2e_marker VALUES ($1)", marker)
    url = standby_url(parent, result)
    assert await query(url, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    for _ in range(100):
        if await query(url, "SELECT count(*) FROM e2e_marker WHERE marker = $1", marker):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the row never reached the member's standby")

    reciprocal = await query(
        primary_url, "SELECT spawn_role FROM federation_peer WHERE id = $1", bootstrap.parent_row_id(result)
    )
    assert reciprocal == "child"  # the member's record lives in the shared database
    listed = parent.api("GET", "/api/v1/system/federation/children").json()["data"]["children"]
    assert str(bootstrap.parent_row_id(result)) not in {c["id"] for c in listed}
    assert not (node / "data" / "postgres").exists()  # no primary of its own
    assert not (node / "data" / "agent" / "platform-database.json").exists()  # moved to its store

    revoke = parent.api("POST", f"/api/v1/system/federation/children/{child['id']}/revoke")
    assert revoke.status_code == 200

    for _ in range(100):  # the parent's primary-duties worker tears it down
        if not await query(
            primary_url, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", pg["slot_name"]
        ):
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError(f"slot {pg['slot_name']} is still there after revoke")
    assert not await query(primary_url, "SELECT count(*) FROM pg_roles WHERE rolname = $1", pg["username"])


async def test_promotion_needs_force_while_the_primary_answers_then_makes_the_member_writable(parent):
    child = parent.wait_for(parent.spawn("cluster_member", TEMPLATE)["child"]["id"], "active")
    node, result = member_files(child)
    state_dir = str(node / "data" / "agent")

    refused = agent("promote", "--state-dir", state_dir, "--yes")
    promoted = agent("promote", "--state-dir", state_dir, "--yes", "--force")

    assert refused.returncode != 0 and "still answers" in refused.stderr + refused.stdout
    assert promoted.returncode == 0, promoted.stderr
    url = standby_url(parent, result)
    assert await query(url, "SELECT pg_is_in_recovery()") is False
    await query(url, "CREATE TABLE promoted_write (ok boolean)")
    settings = await asyncio.to_thread(member.configure, Settings(data_dir=node / "data"))
    assert settings.database.url is not None
    assert f":{result.standby.port}/" in settings.database.url.get_secret_value()

    postmaster = int((node / "standby" / "pgdata" / "postmaster.pid").read_text().split()[0])
    await asyncio.to_thread(halt_node, node)
    assert not pid_alive(postmaster)  # powering the "VM" off stops what its agent started

"""End to end with real processes: a parent hub spawns children that come online federated."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import wait_until
from tests.e2e.hubs import Hub, child_serve_state, halt_node, hub_env

pytestmark = pytest.mark.e2e


def node_dir(parent: Hub, child: dict) -> Path:
    return Path(child["node_instance"]["details"]["work_dir"])


async def child_rows(node: Path) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    connection = await asyncpg.connect(PostgresServer(node / "data" / "postgres").url("powernode"))
    try:
        peers = await connection.fetch("SELECT * FROM federation_peer")
        grants = await connection.fetch("SELECT * FROM federation_grant")
    finally:
        await connection.close()
    return peers, grants


@pytest.mark.parametrize("mode", ["managed_child", "autonomous_peer"])
async def test_a_spawned_child_reaches_active_with_matching_rows(parent, mode):
    spawned = parent.spawn(mode)
    child_id = spawned["child"]["id"]

    child = parent.wait_for(child_id, "active")

    assert child["last_heartbeat_at"] and child["enrolled_at"] and child["activated_at"]
    assert child["remote_instance_url"].startswith("http://127.0.0.1:")
    for _ in range(50):  # the child records the parent's answer a moment after the parent did
        peers, grants = await child_rows(node_dir(parent, child))
        if peers[0]["status"] == "active":
            break
        await asyncio.sleep(0.2)
    [parent_row] = peers
    assert parent_row["spawn_role"] == "child" and parent_row["spawn_mode"] == mode
    assert parent_row["status"] == "active" and parent_row["remote_url"] == parent.federation_url
    held = [g for g in child["grants"] if g["direction"] == "held"]
    if mode == "managed_child":
        [parent_grant], [child_grant] = held, grants
        assert child_grant["direction"] == "granted"
        assert child_grant["resource_kind"] == parent_grant["resource_kind"] == "managed_child_operator"
        assert (
            child_grant["remote_subject"] == parent_grant["remote_subject"] == f"parent-operator@{child_id}"
        )
        assert child_grant["permission_scopes"] == '["read", "write", "admin"]'
        assert (
            child_grant["bearer_hash"]
            and child_grant["expires_at"].isoformat()[:16] == parent_grant["expires_at"][:16]
        )
    else:
        assert held == [] and grants == []


async def test_a_child_spawned_with_the_plain_api_url_reaches_active(parent):
    # The URL `serve` prints first: the child accepts over plain http there, and the accept answer
    # sends it to the federation listener for enroll and heartbeats with its certificate.
    spawned = parent.spawn("managed_child", parent_url=parent.url)
    child_id = spawned["child"]["id"]
    assert spawned["spawn_payload"]["parent_url"] == parent.url

    child = parent.wait_for(child_id, "active")

    assert child["enrolled_at"] and child["last_heartbeat_at"]
    assert child["remote_instance_url"].startswith("http://127.0.0.1:")
    peers, _ = await child_rows(node_dir(parent, child))
    assert [p["remote_url"] for p in peers] == [parent.federation_url]


async def test_a_silent_child_degrades_with_a_finding_and_recovers(parent):
    child_id = parent.spawn("autonomous_peer")["child"]["id"]
    child = parent.wait_for(child_id, "active")
    node = node_dir(parent, child)
    ports = child_serve_state(node)

    halt_node(node)
    degraded = parent.wait_for(child_id, "degraded", timeout=60)

    [finding] = [
        f for f in parent.findings(state="open", kind="peer_heartbeat_stale") if f["peer_id"] == child_id
    ]
    assert degraded["findings"] and degraded["findings"][0]["kind"] == "peer_heartbeat_stale"
    restarted = Hub(
        node / "data",
        port=int(ports["url"].rsplit(":", 1)[1]),
        federation_port=int(ports["federation_url"].rsplit(":", 1)[1]),
    ).start()
    try:
        parent.wait_for(child_id, "active", timeout=60)

        def resolved() -> bool:
            [same] = [f for f in parent.findings(kind="peer_heartbeat_stale") if f["id"] == finding["id"]]
            return same["resolved_at"] is not None

        assert wait_until(resolved, timeout=15, interval=0.2)
    finally:
        restarted.stop()


async def test_first_run_again_is_a_no_op(parent):
    child = parent.wait_for(parent.spawn("autonomous_peer")["child"]["id"], "active")
    node = node_dir(parent, child)
    result = node / "data" / "agent" / "first-run-result.json"
    before = result.read_bytes()

    again = subprocess.run(
        [
            str(Path(sys.executable).with_name("powernode-child-agent")),
            "first-run",
            "--fw-cfg-root",
            str(node / "by_name"),
            "--state-dir",
            str(node / "data" / "agent"),
        ],
        capture_output=True,
        text=True,
        env=hub_env(),
        timeout=60,
    )

    assert again.returncode == 0, again.stderr
    assert result.read_bytes() == before
    assert parent.child(child["id"])["status"] == "active"

"""Spawn through the operator API: each mode, every validation error, the staged payload."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.audit.models import AuditEvent
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.provisioning.models import NodeInstance
from hub.secrets.tokens import ACCEPTANCE_TOKEN_PREFIX
from shared_contract.payload import read_fw_cfg_tree
from tests.hub.helpers import CHILDREN, SPAWN, operator_headers, spawn, spawn_body


@pytest.mark.parametrize("mode", ["managed_child", "autonomous_peer", "cluster_member"])
async def test_spawn_creates_proposed_peer_token_and_staged_payload(client, runtime, settings, mode):
    headers = await operator_headers(runtime)

    data = await spawn(client, headers, mode)

    child = data["child"]
    assert child["status"] == "proposed" and child["spawn_mode"] == mode
    assert child["acceptance_pending"] is True and child["acceptance_expires_at"]
    assert data["acceptance_token"].startswith(f"{ACCEPTANCE_TOKEN_PREFIX}_")
    assert data["spawn_payload"].pop("initiated_by_user_id")  # the operator's id: test_original_wire
    assert data["spawn_payload"] == {
        "parent_url": "https://parent.example.test/",
        "acceptance_token": data["acceptance_token"],
        "spawn_mode": mode,
        "parent_peer_id": child["id"],
        "child_template_id": child["template_id"],
        "contract_version": "v1",
        "region": None,
    }
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, child["id"])
        token = await session.scalar(select(AcceptanceToken).where(AcceptanceToken.peer_id == peer.id))
        node = await session.get(NodeInstance, peer.node_instance_id)
    assert peer.spawn_role == "parent"
    assert data["acceptance_token"] not in token.secret_hash and len(token.secret_hash) == 64
    assert node.state == "staged" and node.provider == "manual"
    tree = Path(node.details["fw_cfg_files"][0]).parent.parent / "by_name"
    staged = read_fw_cfg_tree(tree)
    assert staged.acceptance_token == data["acceptance_token"]
    assert staged.ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    for path in node.details["fw_cfg_files"]:
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600


async def test_spawn_is_audited_without_the_token(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    async with runtime.sessionmaker() as session:
        events = (await session.scalars(select(AuditEvent))).all()
    [event] = [e for e in events if e.action == "child.spawn"]
    assert event.target == data["child"]["id"] and event.actor == "operator:test"
    assert data["acceptance_token"] not in str(event.details)


async def test_manual_attach_provisions_nothing(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, manual_attach=True)
    assert data["child"]["node_instance"] is None
    assert data["acceptance_token"]
    async with runtime.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(NodeInstance)) == 0


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"spawn_mode": None}, 400, "spawn_mode"),
        ({"spawn_mode": "bogus"}, 400, "spawn_mode"),
        ({"parent_url": None}, 400, "parent_url"),
        ({"parent_url": "ftp://parent.example.test"}, 400, "absolute http(s) URL"),
        ({"parent_url": "/relative"}, 400, "absolute http(s) URL"),
        ({"spawn_target": None}, 400, "spawn_target"),
        ({"token_ttl_seconds": 3600}, 400, "token_ttl_seconds"),
        ({"token_ttl_seconds": 31 * 86400}, 400, "token_ttl_seconds"),
        ({"spawn_target": {"template_id": "no-such-template"}}, 422, "Unknown template"),
        ({"spawn_target": {"template_id": "powernode-hub-cluster-member"}}, 422, "needs its own postgres"),
    ],
)
async def test_spawn_validation_errors(client, runtime, change, status, fragment):
    headers = await operator_headers(runtime)
    body = spawn_body()
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value

    response = await client.post(SPAWN, json=body, headers=headers)

    assert response.status_code == status
    error = response.json()
    assert error["success"] is False and fragment in error["error"] and error["code"]
    async with runtime.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(FederationPeer)) == 0


async def test_cluster_member_needs_a_replica_template(client, runtime):
    headers = await operator_headers(runtime)
    body = spawn_body("cluster_member")
    body["spawn_target"]["template_id"] = "powernode-hub"
    response = await client.post(SPAWN, json=body, headers=headers)
    assert response.status_code == 422
    assert "pg-replica" in response.json()["error"]


async def test_ttl_bounds_are_inclusive(client, runtime):
    headers = await operator_headers(runtime)
    for ttl in (86400, 30 * 86400):
        body = spawn_body() | {"token_ttl_seconds": ttl}
        assert (await client.post(SPAWN, json=body, headers=headers)).status_code == 201


async def test_the_manual_payload_file_holds_the_token_and_only_its_owner_can_read_it(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, data["child"]["id"])
        node = await session.get(NodeInstance, peer.node_instance_id)
    payload_file = Path(node.details["payload_file"])

    rotated = await client.post(f"{CHILDREN}/{peer.id}/rotate_token", headers=headers)
    new_token = rotated.json()["data"]["acceptance_token"]

    assert rotated.status_code == 200
    assert json.loads(payload_file.read_text())["acceptance_token"] == new_token
    assert stat.S_IMODE(payload_file.stat().st_mode) == 0o600  # it is a bearer credential
    for path in (payload_file.parent / "by_name").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path

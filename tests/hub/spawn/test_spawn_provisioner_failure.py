"""A provisioner failure is a clear error on the spawn: the peer stays proposed, nothing half-started."""

from __future__ import annotations

from sqlalchemy import select

from hub.federation.peers.models import FederationPeer
from hub.provisioning.models import NodeInstance, NodeTemplate
from tests.hub.helpers import SPAWN, operator_headers, spawn_body


async def add_qemu_template(runtime, tmp_path, **vm):
    # A QEMU binary that exists (it is never started: the spawn fails before), so these tests hold
    # on a machine without QEMU too.
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    async with runtime.sessionmaker() as session:
        session.add(
            NodeTemplate(
                id="qemu-hub",
                name="QEMU hub",
                description="",
                provisioner="qemu",
                modules=["powernode-hub-backend", "powernode-hub-worker", "powernode-postgres"],
                vm={
                    "kernel": str(tmp_path / "no-such-vmlinuz"),
                    "memory_mb": 256,
                    "qemu_binary": str(binary),
                    **vm,
                },
            )
        )
        await session.commit()


async def test_a_missing_kernel_fails_the_spawn_and_leaves_the_peer_proposed(client, runtime, tmp_path):
    headers = await operator_headers(runtime)
    await add_qemu_template(runtime, tmp_path)
    body = spawn_body()
    body["spawn_target"]["template_id"] = "qemu-hub"

    response = await client.post(SPAWN, json=body, headers=headers)

    assert response.status_code == 422
    error = response.json()
    assert error["code"] == "PROVISION_FAILED" and "no-such-vmlinuz" in error["error"]
    child_id = error["details"]["child_id"]
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, child_id)
        node = await session.scalar(select(NodeInstance).where(NodeInstance.id == peer.node_instance_id))
    assert peer.status == "proposed"
    assert node.provider == "qemu" and node.state == "failed" and "no-such-vmlinuz" in node.error
    detail = (await client.get(f"/api/v1/system/federation/children/{child_id}", headers=headers)).json()
    assert detail["data"]["child"]["node_instance"]["state"] == "failed"
    response_seen = detail["data"]["child"]["metadata"]["provisioner_response"]
    assert response_seen["ok"] is False and "no-such-vmlinuz" in response_seen["error"]


async def test_a_bad_vm_setting_is_refused_before_anything_starts(client, runtime, tmp_path):
    headers = await operator_headers(runtime)
    await add_qemu_template(runtime, tmp_path, memory_mb="lots")
    body = spawn_body()
    body["spawn_target"]["template_id"] = "qemu-hub"

    response = await client.post(SPAWN, json=body, headers=headers)

    assert response.status_code == 422 and response.json()["code"] == "PROVISION_FAILED"
    assert "memory_mb" in response.json()["error"]

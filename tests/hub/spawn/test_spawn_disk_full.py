"""A full disk, for real: a 1 MiB tmpfs under the data dir, filled to the last byte."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from hub.config import Settings, VaultSettings
from hub.federation.findings.models import Finding
from hub.federation.peers.models import FederationPeer
from hub.main import create_app
from hub.provisioning.models import NodeInstance
from hub.runtime import HubRuntime
from tests.hub.helpers import SPAWN, operator_headers, spawn_body


@pytest.fixture
def small_disk(scratch_dir: Path) -> Iterator[Path | None]:
    mount = scratch_dir / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"full-disk test not run: cannot mount a tmpfs here ({done.stderr.strip()})")
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    with contextlib.suppress(OSError), (directory / "filler").open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


@contextlib.asynccontextmanager
async def hub_on(settings: Settings):
    runtime = await HubRuntime.open(settings)
    transport = httpx.ASGITransport(app=create_app(settings, runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            yield runtime, client
    finally:
        await runtime.close()


async def count(runtime: HubRuntime, model) -> int:
    async with runtime.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def test_a_full_disk_fails_the_spawn_whole_and_readyz_says_so(settings, small_disk):
    if small_disk is None:
        return
    async with hub_on(settings.model_copy(update={"data_dir": small_disk / "data"})) as (runtime, client):
        headers = await operator_headers(runtime)
        fill(small_disk)

        response = await client.post(SPAWN, json=spawn_body("autonomous_peer"), headers=headers)
        ready = await client.get("/readyz")

        assert response.status_code == 422 and response.json()["code"] == "PROVISION_FAILED"
        assert "No space left on device" in response.json()["error"]
        child_id = response.json()["details"]["child_id"]
        async with runtime.sessionmaker() as session:
            peer = await session.get(FederationPeer, child_id)
            node = await session.get(NodeInstance, peer.node_instance_id)
            finding = await session.scalar(select(Finding).where(Finding.peer_id == peer.id))
        assert node.state == "failed" and "No space left on device" in node.error
        assert finding is not None and finding.kind == "node_provision_failed"
        assert not any((small_disk / "data" / "nodes").glob("*/*"))  # nothing half-written
        assert ready.status_code == 503 and "low free space" in ready.json()["error"]


async def test_a_secret_that_cannot_be_written_leaves_no_child(settings, small_disk):
    if small_disk is None:
        return
    no_vault = VaultSettings(addr=None, token=None)  # the local store, whatever VAULT_ADDR says
    local_store = settings.model_copy(update={"data_dir": small_disk / "data", "vault": no_vault})
    async with hub_on(local_store) as (runtime, client):
        headers = await operator_headers(runtime)
        peers, nodes = await count(runtime, FederationPeer), await count(runtime, NodeInstance)
        fill(small_disk)

        response = await client.post(SPAWN, json=spawn_body("managed_child"), headers=headers)

        assert response.status_code == 507 and response.json()["code"] == "INSUFFICIENT_STORAGE"
        assert (await count(runtime, FederationPeer), await count(runtime, NodeInstance)) == (peers, nodes)
        assert not list((small_disk / "data" / "secrets").rglob("*.tmp"))

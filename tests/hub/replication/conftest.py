"""What the replication tests share: an operator, cluster_member children, a look at the primary.

Slots and roles are cluster-wide while each test has its own database, so every test drops the
slots and roles of the children it spawned when it ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import hvac
import pytest

from hub.config import FederationSettings, Settings
from hub.operators import service as operators_service
from hub.replication import jobs
from hub.replication.credentials import ReplicaNames
from hub.runtime import HubRuntime

API = "/api/v1"
CHILDREN = f"{API}/system/federation/children"
FEDERATION_API = f"{API}/system/federation_api"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The ASGI test client calls from 127.0.0.1: trust it to forward a peer's certificate CN."""
    return settings.model_copy(
        update={
            "federation": FederationSettings(
                trusted_proxies=["127.0.0.1/32"], client_cert_header="X-Client-S-DN-CN"
            )
        }
    )


@pytest.fixture
async def operator(runtime: HubRuntime) -> dict[str, str]:
    async with runtime.sessionmaker() as session:
        _, token = await operators_service.create_operator_token(session, name="ops", role="operator")
        await session.commit()
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Child:
    id: uuid.UUID
    token: str

    @property
    def names(self) -> ReplicaNames:
        return ReplicaNames.of(self.id)

    @property
    def peer_headers(self) -> dict[str, str]:
        """What a trusted TLS proxy forwards for this child's client certificate."""
        return {"X-Client-S-DN-CN": f"fed:{self.id}"}


@pytest.fixture
async def spawn(
    client: httpx.AsyncClient, operator: dict[str, str], superuser_url: str
) -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    """`await spawn()` a manually attached child (cluster_member unless told); its replica is
    dropped from the shared server when the test ends."""
    spawned: list[Child] = []

    async def create(mode: str = "cluster_member") -> Child:
        template = "powernode-hub-cluster-member" if mode == "cluster_member" else "powernode-hub"
        response = await client.post(
            f"{CHILDREN}/spawn",
            headers=operator,
            json={
                "spawn_mode": mode,
                "parent_url": "http://hub.test",
                "spawn_target": {"template_id": template, "manual_attach": True},
            },
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        child = Child(uuid.UUID(data["child"]["id"]), data["acceptance_token"])
        spawned.append(child)
        return child

    yield create
    primary = await asyncpg.connect(superuser_url)
    try:
        for child in spawned:
            await drop_replica(primary, child.names)
    finally:
        await primary.close()


async def drop_replica(primary: asyncpg.Connection, names: ReplicaNames) -> None:
    await primary.execute(
        "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots "
        "WHERE slot_name = $1 AND active_pid IS NOT NULL",
        names.slot,
    )
    await primary.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        names.slot,
    )
    if await roles_named(primary, names.role):
        await primary.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{names.role}"')
        await primary.execute(f'DROP ROLE IF EXISTS "{names.role}"')


@pytest.fixture
async def primary(superuser_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the hub's own database on the primary, to look at what was made."""
    connection = await asyncpg.connect(superuser_url)
    yield connection
    await connection.close()


@pytest.fixture
def vault(openbao: Any) -> hvac.Client:
    return hvac.Client(url=openbao.addr, token=openbao.token)


def read_secret(vault: hvac.Client, names: ReplicaNames) -> dict[str, Any] | None:
    try:
        response = vault.secrets.kv.v2.read_secret_version(
            path=names.secret_path, raise_on_deleted_version=False
        )
    except hvac.exceptions.InvalidPath:
        return None
    return response["data"]["data"]


async def slots_named(primary: asyncpg.Connection, name: str) -> int:
    return await primary.fetchval("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", name)


async def roles_named(primary: asyncpg.Connection, name: str) -> int:
    return await primary.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name)


async def open_setup_findings(primary: asyncpg.Connection) -> int:
    return await primary.fetchval(
        "SELECT count(*) FROM finding WHERE kind = 'cluster_pg_setup_failed' AND resolved_at IS NULL"
    )


async def cluster_pg(primary: asyncpg.Connection, child: Child) -> dict[str, Any] | None:
    raw = await primary.fetchval("SELECT metadata->'cluster_pg' FROM federation_peer WHERE id = $1", child.id)
    return json.loads(raw) if raw is not None else None


async def run_setup(runtime: HubRuntime, child: Child, *, job_try: int = 1) -> Any:
    """The setup job as a worker calls it, for tests that need its exception rather than arq's record."""
    return await jobs.cluster_member_pg_replica_setup(
        {"runtime": runtime, "job_try": job_try}, peer_id=str(child.id)
    )

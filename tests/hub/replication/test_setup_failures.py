"""When the primary will not let the setup finish, the child says why and the operator is told."""

import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from hub import dbroles, migrate
from hub.config import DatabaseSettings, Settings
from hub.embedded.postgres import PostgresServer
from hub.embedded.services import bootstrap_database
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime
from tests.hub.replication.conftest import Child, cluster_pg, run_setup


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"))


async def _open(settings: Settings, url: str) -> HubRuntime:
    database = DatabaseSettings(url=url, pool_size=2, max_overflow=0)
    return await HubRuntime.open(settings.model_copy(update={"database": database}))


@pytest.fixture
async def unprivileged_runtime(settings, database_url, primary) -> AsyncIterator[HubRuntime]:
    """The hub on its usual database, logged in as a role without REPLICATION or CREATEROLE."""
    role, password = f"hub_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    await primary.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    await primary.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    runtime = await _open(settings, _as_user(database_url, role, password))
    try:
        yield runtime
    finally:
        await runtime.close()
        await primary.execute(f"DROP OWNED BY {role}")
        await primary.execute(f"DROP ROLE {role}")


async def test_without_the_replication_privilege_the_child_shows_why(spawn, unprivileged_runtime, primary):
    child = await spawn()

    outcome = await run_setup(unprivileged_runtime, child)  # no Retry: waiting would not help

    block = await cluster_pg(primary, child)
    assert outcome["state"] == block["state"] == "error"
    assert block["reason"].startswith(f"creating replication slot {child.names.slot} failed: permission")
    assert block["reason"].endswith("(SQLSTATE 42501)")
    finding = await primary.fetchval(
        "SELECT message FROM finding WHERE kind = 'cluster_pg_setup_failed' AND peer_id = $1", child.id
    )
    assert finding == f"Replication setup failed: {block['reason']}"


@pytest.fixture
async def primary_without_replication_hba(scratch_dir, settings) -> AsyncIterator[HubRuntime]:
    """A hub whose primary's pg_hba.conf has no `replication` line at all."""
    server = PostgresServer(scratch_dir / "primary").init(durable=False, replication=False)
    server.start()
    runtime = None
    try:
        bootstrap_database(server, "hub")
        url = server.url("hub", user=dbroles.OWNER, password=server.owner_credentials(dbroles.OWNER)[1])
        await migrate.upgrade(url)
        runtime = await _open(settings, url)
        yield runtime
    finally:
        if runtime is not None:
            await runtime.close()
        server.stop(mode="immediate")


async def test_no_replication_line_in_pg_hba_names_the_line_to_add(primary_without_replication_hba):
    runtime = primary_without_replication_hba
    child = Child(uuid.uuid4(), token="")
    async with runtime.sessionmaker() as session:
        session.add(
            FederationPeer(
                id=child.id, name="cm", spawn_role="parent", spawn_mode="cluster_member", status="accepted"
            )
        )
        await session.commit()

    outcome = await run_setup(runtime, child)

    role = child.names.role
    assert outcome["state"] == "error"
    assert outcome["reason"].startswith(f"pg_hba.conf has no replication line for {role} from 127.0.0.1")
    assert f"add: host replication {role} 127.0.0.1/32 scram-sha-256" in outcome["reason"]
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, child.id)
    assert peer is not None and peer.metadata_["cluster_pg"]["reason"] == outcome["reason"]

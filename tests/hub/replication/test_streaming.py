"""The proof that role, slot and pg_hba are right: a standby built with the delivered credential streams."""

import asyncio

import pytest

from hub.embedded.postgres import PostgresServer, make_standby
from tests.hub.helpers import make_csr
from tests.hub.replication.conftest import CHILDREN, FEDERATION_API, roles_named, slots_named


async def test_a_standby_streams_through_the_slot_and_revoke_cuts_it_off(
    spawn, run_jobs, client, operator, primary, pg_server, scratch_dir
):
    if not isinstance(pg_server, PostgresServer):
        pytest.skip("needs the primary this suite starts (pg_basebackup runs as its server user)")
    child = await spawn()
    await run_jobs()
    accepted = await client.post(
        f"{FEDERATION_API}/accept",
        json={"acceptance_token": child.token, "contract_version": 1, "csr_pem": make_csr()[1]},
    )
    block = accepted.json()["data"]["cluster_pg"]
    assert (block["primary_host"], block["primary_port"]) == ("127.0.0.1", pg_server.port)

    slot, user, password = block["slot_name"], block["username"], block["password"]
    standby = await asyncio.to_thread(make_standby, pg_server, slot, scratch_dir / "standby", user, password)
    try:
        streaming = standby.psql("SELECT status FROM pg_stat_wal_receiver")
        slot_active = await primary.fetchval(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot
        )
        await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator)
        ran = await run_jobs()
    finally:
        standby.stop(mode="immediate")

    assert streaming == "streaming" and slot_active is True
    assert ran.failed == 0
    assert await slots_named(primary, slot) == 0
    assert await roles_named(primary, user) == 0

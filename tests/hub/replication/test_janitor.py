"""Slot hygiene: our inactive or WAL-hoarding slots are reported, everyone else's are left alone."""

import asyncio
import json
import uuid

from hub.config import ReplicationSettings
from hub.database import session_scope
from hub.replication import janitor
from hub.replication.credentials import ReplicaNames
from tests.hub.replication.conftest import cluster_pg, drop_replica, slots_named


async def sweep(runtime, **limits):
    settings = runtime.settings.model_copy(update={"replication": ReplicationSettings(**limits)})
    async with session_scope(runtime.sessionmaker) as session:
        return await janitor.sweep_slots(session, settings=settings)


async def open_findings(primary):
    rows = await primary.fetch(
        "SELECT subject, peer_id, message, details FROM finding "
        "WHERE kind = 'replication_slot_inactive' AND resolved_at IS NULL"
    )
    return {row["subject"]: row for row in rows}


async def make_wal(primary):
    await primary.execute("CREATE TABLE wal_filler AS SELECT repeat('x', 100) FROM generate_series(1, 2000)")


async def test_a_slot_inactive_past_the_threshold_is_reported_with_its_retained_wal(
    spawn, run_jobs, runtime, primary
):
    child = await spawn()
    await run_jobs()
    await make_wal(primary)

    await sweep(runtime, slot_inactive_seconds=0.2)  # starts the clock
    first = await open_findings(primary)
    await asyncio.sleep(0.3)
    await sweep(runtime, slot_inactive_seconds=0.2)
    found = (await open_findings(primary))[child.names.slot]

    assert child.names.slot not in first
    assert found["peer_id"] == child.id
    details = json.loads(found["details"])
    since = (await cluster_pg(primary, child))["slot_inactive_since"]
    assert details["inactive_since"] == since
    assert details["retained_bytes"] > 200_000  # the 2000 rows written since the slot was made
    assert details["wal_status"] == "reserved" and details["active"] is False and details["orphan"] is False
    assert found["message"].startswith(f"Replication slot {child.names.slot} (child-")
    assert "inactive since" in found["message"]


async def test_too_much_retained_wal_is_reported_at_once_and_resolved_when_it_clears(
    spawn, run_jobs, runtime, primary
):
    child = await spawn()
    await run_jobs()
    await make_wal(primary)

    await sweep(runtime, slot_max_retained_bytes=1)
    reported = await open_findings(primary)
    resolved = await sweep(runtime)  # the default limits: an hour, 1 GiB

    assert "holds back" in reported[child.names.slot]["message"]
    assert resolved["resolved"] >= 1
    assert child.names.slot not in await open_findings(primary)


async def test_slots_without_our_prefix_are_never_reported(runtime, primary):
    other = f"standby_{uuid.uuid4().hex[:8]}"
    orphan = ReplicaNames.of(uuid.uuid4())  # our prefix, but no child of this hub
    await primary.execute("SELECT pg_create_physical_replication_slot($1, true)", other)
    await primary.execute("SELECT pg_create_physical_replication_slot($1, true)", orphan.slot)
    try:
        await make_wal(primary)

        await sweep(runtime)

        found = await open_findings(primary)
        assert other not in found
        assert await slots_named(primary, other) == 1
        assert found[orphan.slot]["peer_id"] is None
        assert json.loads(found[orphan.slot]["details"])["orphan"] is True
    finally:
        await primary.execute("SELECT pg_drop_replication_slot($1)", other)
        await drop_replica(primary, orphan)

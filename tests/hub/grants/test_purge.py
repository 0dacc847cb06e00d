"""Retention: revoked grants stay 90 days, are then archived (credentials gone), later deleted."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from hub.database import utcnow
from hub.federation.accept.service import bearer_secret_path
from hub.federation.grants import service as grants_service
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import FederationPeer
from hub.secrets import tokens

DAY = timedelta(days=1)


async def arrange(runtime):
    """A revoked granted grant (hash kept), an expired held one (secret stored), an active one."""
    now = utcnow()
    async with runtime.sessionmaker() as session, session.begin():
        peers = [
            FederationPeer(name=f"p{i}", spawn_role="parent", spawn_mode="managed_child", status="active")
            for i in range(3)
        ]
        session.add_all(peers)
        await session.flush()
        held_id = uuid.uuid4()
        await runtime.secrets.put(bearer_secret_path(held_id), {"bearer": "pngb_x_y"})
        common = {
            "resource_kind": "managed_child_operator",
            "remote_subject": "s",
            "permission_scopes": ["read"],
        }
        grants = {
            "revoked": FederationGrant(
                peer_id=peers[0].id,
                direction="granted",
                bearer_hash=tokens.hash_secret("pngb_a_b"),
                expires_at=now + 300 * DAY,
                revoked_at=now,
                purge_after=now + 90 * DAY,
                **common,
            ),
            "expired": FederationGrant(
                id=held_id,
                peer_id=peers[1].id,
                direction="held",
                bearer_secret_ref=bearer_secret_path(held_id),
                expires_at=now - DAY,
                **common,
            ),
            "active": FederationGrant(
                peer_id=peers[2].id,
                direction="granted",
                bearer_hash=tokens.hash_secret("pngb_c_d"),
                expires_at=now + 365 * DAY,
                **common,
            ),
        }
        session.add_all(grants.values())
    return now, {name: g.id for name, g in grants.items()}


async def purge(runtime, now):
    async with runtime.sessionmaker() as session, session.begin():
        return await grants_service.purge(session, secrets=runtime.secrets, retention_days=90, now=now)


async def rows(runtime):
    async with runtime.sessionmaker() as session:
        return {g.id: g for g in await session.scalars(select(FederationGrant))}


async def test_nothing_is_purged_within_the_90_days(runtime):
    now, ids = await arrange(runtime)

    result = await purge(runtime, now + 88 * DAY)

    assert result == {"archived": 0, "secrets_deleted": 0, "deleted": 0}
    states = {name: (await rows(runtime))[i].state(now + 88 * DAY) for name, i in ids.items()}
    assert states == {"revoked": "revoked", "expired": "expired", "active": "active"}


async def test_after_90_days_revoked_and_long_expired_grants_are_archived_without_credentials(runtime):
    now, ids = await arrange(runtime)

    result = await purge(runtime, now + 91 * DAY)

    assert result == {"archived": 2, "secrets_deleted": 1, "deleted": 0}
    grants = await rows(runtime)
    revoked, expired, active = (grants[ids[n]] for n in ("revoked", "expired", "active"))
    assert revoked.state() == expired.state() == "archived" and active.state() == "active"
    assert revoked.bearer_hash is None and expired.bearer_secret_ref is None and active.bearer_hash
    assert await runtime.secrets.get(bearer_secret_path(ids["expired"])) is None


async def test_archived_rows_are_deleted_after_another_retention_period(runtime):
    now, ids = await arrange(runtime)
    await purge(runtime, now + 91 * DAY)

    result = await purge(runtime, now + 182 * DAY)

    assert result["deleted"] == 2
    assert set(await rows(runtime)) == {ids["active"]}

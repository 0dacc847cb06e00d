"""Slot hygiene (DESIGN §6): an abandoned slot keeps WAL on the primary until the disk fills.

Only slots named with our prefix are looked at. A slot is reported (`replication_slot_inactive`,
one finding per slot name) when nobody has streamed from it for `slot_inactive_seconds`, when it
holds back more than `slot_max_retained_bytes` of WAL, when its WAL is already lost, or when no
cluster_member of this hub owns it. When a slot went inactive is kept in its peer's
`metadata.cluster_pg.slot_inactive_since`, so the clock survives restarts of the hub.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.database import utcnow
from hub.federation.findings import service as findings_service
from hub.federation.findings.models import Finding
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.replication import metadata, primary
from hub.replication.credentials import peer_of_slot

SLOT_INACTIVE = "replication_slot_inactive"
INACTIVE_SINCE = "slot_inactive_since"


def token_expired_unaccepted() -> ColumnElement[bool]:
    """Still `proposed`, and no acceptance token that could still be redeemed."""
    live_token = (
        select(AcceptanceToken.id)
        .where(
            AcceptanceToken.peer_id == FederationPeer.id,
            AcceptanceToken.superseded_at.is_(None),
            AcceptanceToken.expires_at > utcnow(),
        )
        .exists()
    )
    return and_(FederationPeer.status == "proposed", ~live_token)


async def members_to_tear_down(session: AsyncSession) -> list[tuple[uuid.UUID, bool]]:
    """(peer id, expired?) of cluster_members revoked, or never accepted before their token expired,
    whose slot and role have not been torn down yet (a teardown job lost, or never enqueued)."""
    state = func.coalesce(metadata.field("state"), "")
    revoked = and_(FederationPeer.status == "revoked", state != "revoked")
    expired = and_(token_expired_unaccepted(), state != "expired")
    rows = await session.execute(
        select(FederationPeer.id, expired).where(
            FederationPeer.spawn_role == "parent",
            FederationPeer.spawn_mode == "cluster_member",
            or_(revoked, expired),
        )
    )
    return [(peer_id, bool(is_expired)) for peer_id, is_expired in rows]


async def _inactive_since(
    session: AsyncSession, slot: primary.SlotState, peer_id: uuid.UUID, now: datetime
) -> datetime | None:
    """Start the peer's inactivity clock at the first inactive sighting; stop it once the slot streams."""
    if slot.active:
        await metadata.update_block(
            session,
            peer_id=peer_id,
            set_={},
            unset=(INACTIVE_SINCE,),
            where=(metadata.field(INACTIVE_SINCE).is_not(None),),
        )
        return None
    await metadata.update_block(
        session,
        peer_id=peer_id,
        set_={INACTIVE_SINCE: now.isoformat()},
        where=(metadata.field(INACTIVE_SINCE).is_(None),),
    )
    since = await session.scalar(select(metadata.field(INACTIVE_SINCE)).where(FederationPeer.id == peer_id))
    return datetime.fromisoformat(since) if since else now


def _problem(
    slot: primary.SlotState, *, owned: bool, since: datetime | None, now: datetime, settings: Settings
) -> str | None:
    limits = settings.replication
    if slot.wal_status == "lost":
        return "has lost the WAL its member needs (the member must be rebuilt)"
    if (slot.retained_bytes or 0) > limits.slot_max_retained_bytes:
        return f"holds back {slot.retained_bytes} bytes of WAL (limit {limits.slot_max_retained_bytes})"
    if slot.active:
        return None
    if not owned:
        return "is inactive and no cluster_member of this hub owns it"
    if since is not None and (now - since).total_seconds() >= limits.slot_inactive_seconds:
        return f"has been inactive since {since.isoformat()}"
    return None


async def _owner(session: AsyncSession, slot: primary.SlotState) -> tuple[uuid.UUID, str] | None:
    peer_id = peer_of_slot(slot.name)
    if peer_id is None:
        return None
    row = (
        await session.execute(
            select(FederationPeer.id, FederationPeer.name).where(
                FederationPeer.id == peer_id, FederationPeer.spawn_mode == "cluster_member"
            )
        )
    ).first()
    return (row[0], row[1]) if row else None


async def _check(session: AsyncSession, slot: primary.SlotState, *, settings: Settings) -> bool:
    """Report the slot if something is wrong with it; True when it was reported."""
    now = utcnow()
    owner = await _owner(session, slot)
    since = await _inactive_since(session, slot, owner[0], now) if owner else None
    problem = _problem(slot, owned=owner is not None, since=since, now=now, settings=settings)
    if problem is None:
        return False
    details: dict[str, Any] = {
        "slot_name": slot.name,
        "active": slot.active,
        "wal_status": slot.wal_status,
        "restart_lsn": slot.restart_lsn,
        "retained_bytes": slot.retained_bytes,
        "inactive_since": since.isoformat() if since else None,
        "orphan": owner is None,
    }
    await findings_service.open_finding(
        session,
        kind=SLOT_INACTIVE,
        subject=slot.name,
        peer_id=owner[0] if owner else None,
        message=f"Replication slot {slot.name} ({owner[1] if owner else 'no child'}) {problem}",
        details=details,
    )
    return True


async def sweep_slots(session: AsyncSession, *, settings: Settings) -> dict[str, int]:
    """Open or refresh a finding per troubled slot of ours; resolve those whose slot is fine or gone."""
    slots = await primary.our_slots(session)
    if slots is None:
        return {"slots": 0, "reported": 0, "resolved": 0}
    reported = {slot.name for slot in slots if await _check(session, slot, settings=settings)}
    still_open = await session.scalars(
        select(Finding.subject).where(Finding.kind == SLOT_INACTIVE, Finding.resolved_at.is_(None))
    )
    cleared = [subject for subject in still_open if subject not in reported]
    resolved = await findings_service.resolve(session, kind=SLOT_INACTIVE, subjects=cleared) if cleared else 0
    return {"slots": len(slots), "reported": len(reported), "resolved": resolved}

"""cluster_member set-ups that stopped moving: a finding each, saying what the operator can do.

A setup is retried by itself (hub.outbox) and a failure opens `cluster_pg_setup_failed` at once;
these cover what no job reports: a setup still not `ready` after `stuck_seconds` whatever the
reason, and a member that accepted that long ago and never took its credential.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.database import utcnow
from hub.federation.findings import service as findings_service
from hub.federation.findings.models import Finding
from hub.federation.peers.models import FederationPeer
from hub.replication import janitor, metadata

SETUP_STALLED = "cluster_pg_setup_stalled"
UNDELIVERED = "cluster_pg_credential_undelivered"
CHILDREN = "/api/v1/system/federation/children"
LIVE = ("proposed", "accepted", "enrolled", "active", "degraded")
DELIVERABLE = ("accepted", "enrolled", "active", "degraded")


def _member() -> ColumnElement[bool]:
    return and_(FederationPeer.spawn_role == "parent", FederationPeer.spawn_mode == "cluster_member")


def _setup_stalled(before: Any) -> ColumnElement[bool]:
    ready = func.coalesce(metadata.field("state"), "") == "ready"
    return and_(
        _member(),
        FederationPeer.status.in_(LIVE),
        not_(ready),
        FederationPeer.created_at < before,
        not_(janitor.token_expired_unaccepted()),
    )


def _undelivered(before: Any) -> ColumnElement[bool]:
    return and_(
        _member(),
        FederationPeer.status.in_(DELIVERABLE),
        metadata.field("state") == "ready",
        metadata.field("delivered_at").is_(None),
        FederationPeer.accepted_at < before,
    )


async def sweep(session: AsyncSession, *, settings: Settings) -> dict[str, int]:
    before = utcnow() - timedelta(seconds=settings.federation.stuck_seconds)
    stalled = (
        await session.execute(
            select(FederationPeer.id, FederationPeer.name, metadata.field("state")).where(
                _setup_stalled(before)
            )
        )
    ).all()
    for peer_id, name, state in stalled:
        await findings_service.open_finding(
            session,
            kind=SETUP_STALLED,
            subject=str(peer_id),
            peer_id=peer_id,
            message=(
                f"The replication setup of {name} has not completed (state: {state or 'pending'}). It is "
                "retried by itself; a cluster_pg_setup_failed finding says why it fails. Fix that, or "
                f"run it again now (POST {CHILDREN}/{peer_id}/replication/retry)"
            ),
            details={"state": state},
        )
    undelivered = (
        await session.execute(select(FederationPeer.id, FederationPeer.name).where(_undelivered(before)))
    ).all()
    for peer_id, name in undelivered:
        await findings_service.open_finding(
            session,
            kind=UNDELIVERED,
            subject=str(peer_id),
            peer_id=peer_id,
            message=(
                f"{name} accepted long ago and has not taken its replication credential: check the "
                "member's agent log (it fetches GET replication_credential); if it lost it, reissue it "
                f"(POST {CHILDREN}/{peer_id}/replication/reissue)"
            ),
        )
    await _resolve(session, SETUP_STALLED, {str(row[0]) for row in stalled})
    await _resolve(session, UNDELIVERED, {str(row[0]) for row in undelivered})
    return {"setups_stalled": len(stalled), "credentials_undelivered": len(undelivered)}


async def _resolve(session: AsyncSession, kind: str, still: set[str]) -> None:
    open_subjects = await session.scalars(
        select(Finding.subject).where(Finding.kind == kind, Finding.resolved_at.is_(None))
    )
    cleared = [subject for subject in open_subjects if subject not in still]
    if cleared:
        await findings_service.resolve(session, kind=kind, subjects=cleared)

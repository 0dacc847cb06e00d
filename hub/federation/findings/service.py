"""Findings: open one per (kind, subject), refresh while it lasts, resolve when it clears."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.database import utcnow
from hub.exceptions import ValidationFailed
from hub.federation.findings.models import Finding
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.provisioning.models import NodeInstance

# `metadata.enroll_refused` of an accepted peer: why its last enroll call was refused (peering).
ENROLL_REFUSED = "enroll_refused"
HEARTBEAT_STALE = "peer_heartbeat_stale"
NEVER_ACTIVE = "peer_enrolled_never_active"
NEVER_ENROLLED = "peer_accepted_never_enrolled"
TOKEN_EXPIRED = "acceptance_token_expired"
ACCEPTED_NEVER_ENROLLED = "peer_accepted_never_enrolled"
NODE_STUCK = "node_stuck"
CHILDREN = "/api/v1/system/federation/children"


async def open_finding(
    session: AsyncSession,
    *,
    kind: str,
    subject: str,
    peer_id: uuid.UUID | None,
    message: str,
    severity: str = "warning",
    details: dict[str, Any] | None = None,
) -> None:
    """Open it, or refresh last_seen and details if it is already open (never a duplicate)."""
    now = utcnow()
    await session.execute(
        insert(Finding)
        .values(
            kind=kind,
            subject=subject,
            peer_id=peer_id,
            message=message,
            severity=severity,
            details=details or {},
            first_seen=now,
            last_seen=now,
        )
        .on_conflict_do_update(
            index_elements=[Finding.kind, Finding.subject],
            index_where=Finding.resolved_at.is_(None),
            set_={"last_seen": now, "message": message, "details": details or {}},
        )
    )


async def resolve(session: AsyncSession, *, kind: str, subjects: list[str] | None = None) -> int:
    query = update(Finding).where(Finding.kind == kind, Finding.resolved_at.is_(None))
    if subjects is not None:
        query = query.where(Finding.subject.in_(subjects))
    result = await session.execute(query.values(resolved_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


async def get_all(
    session: AsyncSession, *, state: str | None, kind: str | None, peer_id: str | None, limit: int
) -> list[Finding]:
    query = select(Finding).order_by(Finding.last_seen.desc()).limit(limit)
    if state == "open":
        query = query.where(Finding.resolved_at.is_(None))
    elif state == "resolved":
        query = query.where(Finding.resolved_at.is_not(None))
    elif state is not None:
        raise ValidationFailed("state must be open or resolved")
    if kind:
        query = query.where(Finding.kind == kind)
    if peer_id:
        try:
            query = query.where(Finding.peer_id == uuid.UUID(peer_id))
        except ValueError as e:
            raise ValidationFailed("peer_id must be a UUID") from e
    return list((await session.scalars(query)).all())


async def sweep_heartbeats(session: AsyncSession, *, settings: Settings) -> dict[str, int]:
    """active → degraded past the stale threshold, with a finding; resolve it once beats resume."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.federation.heartbeat_stale_seconds)
    degraded = (
        await session.execute(
            update(FederationPeer)
            .where(
                FederationPeer.spawn_role == "parent",
                FederationPeer.status == "active",
                FederationPeer.last_heartbeat_at < stale_before,
            )
            .values(status="degraded", updated_at=now)
            .returning(FederationPeer.id, FederationPeer.name, FederationPeer.last_heartbeat_at)
        )
    ).all()
    stale = (
        await session.execute(
            select(FederationPeer.id, FederationPeer.name, FederationPeer.last_heartbeat_at).where(
                FederationPeer.spawn_role == "parent", FederationPeer.status == "degraded"
            )
        )
    ).all()
    for peer_id, name, last in {*degraded, *stale}:
        await open_finding(
            session,
            kind=HEARTBEAT_STALE,
            subject=str(peer_id),
            peer_id=peer_id,
            message=f"No heartbeat from {name} since {last.isoformat() if last else 'never'}",
            details={"last_heartbeat_at": last.isoformat() if last else None},
        )
    recovered = (
        await session.scalars(
            select(Finding.subject)
            .join(FederationPeer, FederationPeer.id == Finding.peer_id)
            .where(
                Finding.kind == HEARTBEAT_STALE,
                Finding.resolved_at.is_(None),
                FederationPeer.status != "degraded",
            )
        )
    ).all()
    resolved = await resolve(session, kind=HEARTBEAT_STALE, subjects=list(recovered)) if recovered else 0
    return {"degraded": len(degraded), "resolved": resolved}


async def sweep_handshakes(session: AsyncSession, *, settings: Settings) -> dict[str, int]:
    """Surface accepted peers that never enrolled (with the cause seen, if any), enrolled peers that
    never became active, and proposed peers whose token expired."""
    now = utcnow()
    never_before = now - timedelta(seconds=settings.federation.heartbeat_stale_seconds)
    never = (
        await session.execute(
            select(FederationPeer.id, FederationPeer.name).where(
                FederationPeer.spawn_role == "parent",
                FederationPeer.status == "enrolled",
                FederationPeer.enrolled_at < never_before,
            )
        )
    ).all()
    for peer_id, name in never:
        await open_finding(
            session,
            kind=NEVER_ACTIVE,
            subject=str(peer_id),
            peer_id=peer_id,
            message=f"{name} enrolled but no heartbeat ever arrived",
        )
    # The sooner of the two patiences: a stuck handshake is worth saying as soon as either says so.
    stuck_before = now - timedelta(
        seconds=min(settings.federation.heartbeat_stale_seconds, settings.federation.stuck_seconds)
    )
    stuck = (
        await session.execute(
            select(FederationPeer.id, FederationPeer.name, FederationPeer.metadata_).where(
                FederationPeer.spawn_role == "parent",
                FederationPeer.status == "accepted",
                FederationPeer.accepted_at < stuck_before,
            )
        )
    ).all()
    for peer_id, name, metadata in stuck:
        refused = (metadata or {}).get(ENROLL_REFUSED) or {}
        if refused.get("cause"):
            message = (
                f"{name} accepted but never enrolled: its enroll calls are refused, "
                f"{refused['cause']} (last at {refused.get('at')})"
            )
        else:
            message = (
                f"{name} accepted but never enrolled: no enroll call has arrived (is its hub running, "
                "and can it reach the federation URL the accept answer named?)"
            )
        message += (
            ". If it lost the accept's answer or failed its first run: check its console, then rotate "
            f"its token (POST {CHILDREN}/{peer_id}/rotate_token), which re-stages the payload so it "
            "starts over"
        )
        await open_finding(
            session,
            kind=NEVER_ENROLLED,
            subject=str(peer_id),
            peer_id=peer_id,
            message=message,
            details={"enroll_refused": refused} if refused else {},
        )
    live_token = (
        select(AcceptanceToken.id)
        .where(
            AcceptanceToken.peer_id == FederationPeer.id,
            AcceptanceToken.superseded_at.is_(None),
            AcceptanceToken.expires_at > now,
        )
        .exists()
    )
    expired = (
        await session.execute(
            select(FederationPeer.id, FederationPeer.name).where(
                FederationPeer.spawn_role == "parent", FederationPeer.status == "proposed", ~live_token
            )
        )
    ).all()
    for peer_id, name in expired:
        await open_finding(
            session,
            kind=TOKEN_EXPIRED,
            subject=str(peer_id),
            peer_id=peer_id,
            message=f"The acceptance token of {name} expired before it was accepted; rotate it",
        )
    await _resolve_cleared(session, NEVER_ACTIVE, FederationPeer.status != "enrolled")
    await _resolve_cleared(session, NEVER_ENROLLED, FederationPeer.status != "accepted")
    # Cleared by an accept, a revoke, or a rotate that gave the child a live token.
    await _resolve_cleared(session, TOKEN_EXPIRED, or_(FederationPeer.status != "proposed", live_token))
    return {"never_active": len(never), "never_enrolled": len(stuck), "token_expired": len(expired)}


async def sweep_stuck(session: AsyncSession, *, settings: Settings) -> dict[str, int]:
    """Children that stopped moving: a node still `pending` (its
    provisioner never finished, and the outbox did not manage to finish it either). A node that
    booted and does not accept is `node_not_accepting` (hub.provisioning.watch)."""
    before = utcnow() - timedelta(seconds=settings.federation.stuck_seconds)
    nodes = (
        await session.execute(
            select(
                NodeInstance.id,
                NodeInstance.state,
                NodeInstance.updated_at,
                FederationPeer.id,
                FederationPeer.name,
            )
            .join(FederationPeer, FederationPeer.node_instance_id == NodeInstance.id)
            .where(
                NodeInstance.state == "pending",
                NodeInstance.updated_at < before,
                FederationPeer.status == "proposed",
            )
        )
    ).all()
    for node_id, state, since, peer_id, name in nodes:
        await open_finding(
            session,
            kind=NODE_STUCK,
            subject=str(node_id),
            peer_id=peer_id,
            message=(
                f"The node of {name} has been {state} since {since.isoformat()}: its provisioner never "
                "finished (see outbox_entry_failing for why); rotate the child's token to provision it "
                f"again (POST {CHILDREN}/{peer_id}/rotate_token), or revoke it and spawn again"
            ),
            details={"node_instance_id": str(node_id), "state": state, "since": since.isoformat()},
        )
    await _resolve_nodes_moved_on(session)
    return {"nodes_stuck": len(nodes)}


async def _resolve_nodes_moved_on(session: AsyncSession) -> None:
    subjects = (
        await session.scalars(
            select(Finding.subject)
            .join(FederationPeer, FederationPeer.id == Finding.peer_id)
            .join(NodeInstance, NodeInstance.id == FederationPeer.node_instance_id)
            .where(
                Finding.kind == NODE_STUCK,
                Finding.resolved_at.is_(None),
                or_(NodeInstance.state != "pending", FederationPeer.status != "proposed"),
            )
        )
    ).all()
    if subjects:
        await resolve(session, kind=NODE_STUCK, subjects=list(subjects))


async def _resolve_cleared(session: AsyncSession, kind: str, cleared: Any) -> None:
    subjects = (
        await session.scalars(
            select(Finding.subject)
            .join(FederationPeer, FederationPeer.id == Finding.peer_id)
            .where(Finding.kind == kind, Finding.resolved_at.is_(None), cleared)
        )
    ).all()
    if subjects:
        await resolve(session, kind=kind, subjects=list(subjects))


async def count_open(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Finding.kind, func.count()).where(Finding.resolved_at.is_(None)).group_by(Finding.kind)
    )
    return {kind: count for kind, count in rows}

"""Peers: children as the parent sees them (list, show), every peer row, `peer.revoke!`, the views."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import cast, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.exceptions import Conflict, NotFound, ValidationFailed
from hub.federation.accept import service as accept_service
from hub.federation.findings.models import Finding
from hub.federation.grants import service as grants_service
from hub.federation.grants.models import FederationGrant
from hub.federation.peers import jobs as peers_jobs
from hub.federation.peers import listing
from hub.federation.peers.models import (
    SPAWN_ROLES,
    AcceptanceToken,
    FederationPeer,
)
from hub.federation.peers.schemas import (
    ChildDetail,
    FindingView,
    GrantView,
    NodeInstanceView,
    PeerSummary,
)
from hub.outbox import service as outbox_service
from hub.provisioning.models import NodeInstance
from hub.runtime import HubRuntime

MAX_PAGE = listing.MAX_PAGE
parse_statuses = listing.parse_statuses
DEFAULT_REVOCATION_REASON = "operator-initiated"


def parse_peer_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as e:
        raise NotFound(f"Child {value!r} not found") from e


async def get_child_or_raise(session: AsyncSession, *, peer_id: str | uuid.UUID) -> FederationPeer:
    pid = peer_id if isinstance(peer_id, uuid.UUID) else parse_peer_id(peer_id)
    peer = await session.scalar(
        select(FederationPeer).where(FederationPeer.id == pid, FederationPeer.spawn_role == "parent")
    )
    if peer is None:
        raise NotFound(f"Child {peer_id} not found")
    return peer


async def _live_tokens(session: AsyncSession, peer_ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    if not peer_ids:
        return {}
    rows = await session.execute(
        select(AcceptanceToken.peer_id, AcceptanceToken.expires_at).where(
            AcceptanceToken.peer_id.in_(peer_ids),
            AcceptanceToken.superseded_at.is_(None),
            AcceptanceToken.consumed_at.is_(None),
        )
    )
    return {peer_id: expires_at for peer_id, expires_at in rows}


def remote_instance_url(peer: FederationPeer) -> str | None:
    """The child's own URL once it reported one; until then, as the original, the spawn's URL."""
    spawn = (peer.metadata_ or {}).get("spawn") or {}
    return peer.remote_url or spawn.get("parent_url") or None


def _summary_fields(peer: FederationPeer, token_expires_at: datetime | None) -> dict[str, Any]:
    return {
        "id": str(peer.id),
        "name": peer.name,
        "remote_instance_url": remote_instance_url(peer),
        "spawn_mode": peer.spawn_mode,
        "status": peer.status,
        "created_at": peer.created_at,
        "last_heartbeat_at": peer.last_heartbeat_at,
        "acceptance_pending": peer.status == "proposed"
        and token_expires_at is not None
        and token_expires_at > utcnow(),
        "acceptance_expires_at": token_expires_at if peer.status == "proposed" else None,
        "template_id": peer.template_id,
        "region": peer.region,
        "emancipated": peer.emancipated_at is not None,
    }


def peer_summary(peer: FederationPeer) -> PeerSummary:
    return PeerSummary(
        id=str(peer.id),
        name=peer.name,
        spawn_role=peer.spawn_role,
        spawn_mode=peer.spawn_mode,
        status=peer.status,
        remote_url=peer.remote_url,
        remote_platform_id=peer.remote_platform_id,
        created_at=peer.created_at,
        last_heartbeat_at=peer.last_heartbeat_at,
        emancipated=peer.emancipated_at is not None,
        revoked_at=peer.revoked_at,
        revoke_reason=peer.revoke_reason,
    )


def grant_view(grant: FederationGrant) -> GrantView:
    return GrantView(
        id=str(grant.id),
        peer_id=str(grant.peer_id),
        direction=grant.direction,
        resource_kind=grant.resource_kind,
        remote_subject=grant.remote_subject,
        permission_scopes=grant.permission_scopes,
        allowlists=grant.allowlists,
        state=grant.state(),
        created_at=grant.created_at,
        expires_at=grant.expires_at,
        revoked_at=grant.revoked_at,
        revoke_reason=grant.revoke_reason,
        purge_after=grant.purge_after,
        metadata=grant.metadata_,
    )


def finding_view(finding: Finding) -> FindingView:
    return FindingView(
        id=str(finding.id),
        kind=finding.kind,
        subject=finding.subject,
        peer_id=str(finding.peer_id) if finding.peer_id else None,
        severity=finding.severity,
        message=finding.message,
        details=finding.details,
        first_seen=finding.first_seen,
        last_seen=finding.last_seen,
        resolved_at=finding.resolved_at,
    )


def node_instance_view(node: NodeInstance) -> NodeInstanceView:
    return NodeInstanceView(
        id=str(node.id),
        name=node.name,
        provider=node.provider,
        template_id=node.template_id,
        region=node.region,
        state=node.state,
        provider_ref=node.provider_ref,
        payload_digest=node.payload_digest,
        error=node.error,
        details=node.details,
    )


async def detail(session: AsyncSession, peer: FederationPeer) -> ChildDetail:
    tokens = await _live_tokens(session, [peer.id])
    grants = (
        await session.scalars(
            select(FederationGrant)
            .where(FederationGrant.peer_id == peer.id, FederationGrant.archived_at.is_(None))
            .order_by(FederationGrant.created_at)
        )
    ).all()
    findings = (
        await session.scalars(
            select(Finding)
            .where(Finding.peer_id == peer.id, Finding.resolved_at.is_(None))
            .order_by(Finding.first_seen)
        )
    ).all()
    node = await session.get(NodeInstance, peer.node_instance_id) if peer.node_instance_id else None
    return ChildDetail(
        **_summary_fields(peer, tokens.get(peer.id)),
        endpoints=peer.endpoints,
        capabilities=peer.capabilities,
        extension_slugs=peer.extension_slugs,
        sync_cursor=peer.sync_cursor,
        platform_version=peer.platform_version,
        data_residency=peer.data_residency,
        metadata=peer.metadata_,
        signed_at=peer.signed_at,
        spawn_role=peer.spawn_role,
        remote_platform_id=peer.remote_platform_id,
        contract_version=peer.contract_version,
        accepted_at=peer.accepted_at,
        enrolled_at=peer.enrolled_at,
        activated_at=peer.activated_at,
        revoked_at=peer.revoked_at,
        revoke_reason=peer.revoke_reason,
        client_cert_fingerprint=peer.client_cert_fingerprint,
        grants=[grant_view(g) for g in grants],
        node_instance=node_instance_view(node) if node else None,
        findings=[finding_view(f) for f in findings],
    )


async def list_peers(
    session: AsyncSession, *, spawn_role: str | None, statuses: list[str], limit: int
) -> list[FederationPeer]:
    """Every peer row, whatever its role: the children we spawned and the parent that spawned us."""
    if spawn_role is not None and spawn_role not in SPAWN_ROLES:
        raise ValidationFailed(f"Unknown spawn_role {spawn_role!r}; roles: {', '.join(SPAWN_ROLES)}")
    query = select(FederationPeer).order_by(FederationPeer.created_at.desc(), FederationPeer.id.desc())
    if spawn_role:
        query = query.where(FederationPeer.spawn_role == spawn_role)
    if statuses:
        query = query.where(FederationPeer.status.in_(statuses))
    return list((await session.scalars(query.limit(limit))).all())


async def get_peer_or_raise(session: AsyncSession, *, peer_id: str) -> FederationPeer:
    peer = await session.get(FederationPeer, parse_peer_id(peer_id))
    if peer is None:
        raise NotFound(f"Peer {peer_id} not found")
    return peer


async def revoke(
    session: AsyncSession, *, peer: FederationPeer, reason: str | None, actor: str, retention_days: int = 90
) -> FederationPeer:
    """The hard break: status revoked, token and certificate dead, grants on our side revoked."""
    now = utcnow()
    revoked = await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer.id, FederationPeer.status != "revoked")
        .values(
            status="revoked",
            revoked_at=now,
            revoke_reason=reason,
            updated_at=now,
            # The original keeps the reason in the metadata too (its default when none was given).
            metadata_=FederationPeer.metadata_.op("||")(
                cast(literal(json.dumps({"revocation_reason": reason or DEFAULT_REVOCATION_REASON})), JSONB)
            ),
        )
        .returning(FederationPeer.id)
    )
    if revoked is None:
        raise Conflict(f"Peer {peer.id} is already revoked", code="ALREADY_REVOKED")
    await session.execute(
        update(AcceptanceToken)
        .where(AcceptanceToken.peer_id == peer.id, AcceptanceToken.superseded_at.is_(None))
        .values(superseded_at=now)
    )
    await session.execute(
        update(FederationGrant)
        .where(FederationGrant.peer_id == peer.id, FederationGrant.revoked_at.is_(None))
        .values(
            revoked_at=now,
            revoke_reason=reason or "peer revoked",
            purge_after=now + timedelta(days=retention_days),
        )
    )
    await audit_service.record(
        session,
        actor=actor,
        action="child.revoke" if peer.spawn_role == "parent" else "peer.revoke",
        target=str(peer.id),
        details={"reason": reason, "spawn_role": peer.spawn_role},
    )
    await session.refresh(peer)
    return peer


async def revoke_peer(
    session: AsyncSession,
    *,
    runtime: HubRuntime,
    peer: FederationPeer,
    reason: str | None,
    actor: str,
    notify: bool = True,
) -> FederationPeer:
    """`peer.revoke!` from either side: the row and its grants here, bearer secrets deleted, the
    other side told (unless it told us), and a cluster_member's slot and role torn down."""
    peer = await revoke(
        session,
        peer=peer,
        reason=reason,
        actor=actor,
        retention_days=runtime.settings.federation.grant_retention_days,
    )
    entries = []
    if notify:
        entries.append(await peers_jobs.request_revoke_notice(session, peer_id=peer.id))
    if peer.spawn_role == "parent" and peer.spawn_mode == "cluster_member":
        from hub.replication import jobs as replication_jobs

        entries.append(await replication_jobs.request_teardown(session, peer_id=peer.id))
    await session.commit()
    await outbox_service.dispatch_now(runtime, entries)
    await grants_service.forget_bearers(session, secrets=runtime.secrets, peer_id=peer.id)
    await accept_service.forget_unused_bearer(session, runtime=runtime, peer=peer)
    await session.commit()
    return peer

"""Enroll and "what am I to you": the calls a live peer makes with its client certificate."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.exceptions import Unauthorized
from hub.federation.peering.auth import PeerIdentity
from hub.federation.peers.models import FederationPeer
from shared_contract.enroll import EnrollRequest, EnrollResponseData

ENROLL_STATUSES = ("accepted", "enrolled", "active", "degraded")
LIVE_STATUSES = ("accepted", "enrolled", "active", "degraded")


async def authenticate(
    session: AsyncSession, *, identity: PeerIdentity, statuses: tuple[str, ...]
) -> FederationPeer:
    """The live peer behind a certificate: revoked peers and replaced certificates get 401."""
    peer = await session.get(FederationPeer, identity.peer_id)
    if (
        peer is None
        or peer.status not in statuses
        or (
            identity.cert_fingerprint is not None
            and peer.client_cert_fingerprint != identity.cert_fingerprint
        )
    ):
        raise Unauthorized("A valid peer client certificate is required")
    return peer


async def enroll(
    session: AsyncSession, *, peer: FederationPeer, request: EnrollRequest
) -> EnrollResponseData:
    """accepted → enrolled once the child finished its first run; repeating it changes nothing."""
    now = utcnow()
    values: dict[str, Any] = {"status": "enrolled", "enrolled_at": now, "updated_at": now}
    if request.platform_url:
        values["remote_url"] = request.platform_url
    if request.platform_id:
        values["remote_platform_id"] = request.platform_id
    if request.endpoints:
        values["endpoints"] = [e.model_dump(exclude_none=True) for e in request.endpoints]
    if request.capabilities:
        values["capabilities"] = request.capabilities
    moved = await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer.id, FederationPeer.status == "accepted")
        .values(**values)
        .returning(FederationPeer.enrolled_at)
    )
    if moved is not None:
        await audit_service.record(
            session, actor=f"peer:{peer.id}", action="peer.enroll", target=str(peer.id)
        )
    await session.commit()
    await session.refresh(peer)
    return EnrollResponseData(
        peer_id=str(peer.id), status=peer.status, enrolled_at=(peer.enrolled_at or now).isoformat()
    )

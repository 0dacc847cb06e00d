"""Delivering the replication credential to its cluster_member: once, recorded in the same transaction.

Two ways out: in the accept answer (when the setup finished first), or `GET replication_credential`
(when the member accepted first). The password comes from the secret store at the moment of delivery
and is never stored anywhere else; `delivered_at` is set by one guarded UPDATE, so two concurrent
fetches cannot both succeed. An operator's reissue rotates the password and clears it again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.exceptions import ServiceUnavailable
from hub.federation.peers.models import FederationPeer
from hub.replication import metadata, redis_acl
from hub.replication.credentials import Credential, ReplicaNames
from hub.replication.exceptions import AlreadyDelivered, CredentialNotReady, NotClusterMember
from hub.runtime import HubRuntime
from shared_contract.accept import ClusterPgBlock
from shared_contract.replication import ReplicationCredential

DELIVERY_STATUSES = ("accepted", "enrolled", "active", "degraded")
DELIVERY_KEYS = ("delivered_at", "delivered_via")
VIA_ACCEPT = "accept"
ALREADY_DELIVERED = "The replication credential was already delivered; an operator can reissue it"


def _deliverable(peer: FederationPeer, via: str) -> tuple[dict[str, Any], bool]:
    """The ready block and whether this is a repeat the member may have; else why not.

    An accept retried by the same child key (the accept service proves that) gets it again while
    the member has not enrolled: the answer it lost may have carried it. The fetch route never
    repeats it.
    """
    if peer.spawn_mode != "cluster_member":
        raise NotClusterMember(f"Peer {peer.id} is not a cluster_member")
    block = (peer.metadata_ or {}).get("cluster_pg") or {}
    if block.get("state") != "ready":
        raise CredentialNotReady(
            f"The replication setup is not ready (state: {block.get('state', 'pending')})"
        )
    # Only while the member has not confirmed it got that answer (it enrolled with its certificate).
    repeat = via == VIA_ACCEPT and block.get("delivered_via") == VIA_ACCEPT and peer.status == "accepted"
    if block.get("delivered_at") and not repeat:
        raise AlreadyDelivered(ALREADY_DELIVERED)
    return block, repeat


async def _stored(runtime: HubRuntime, peer: FederationPeer, block: dict[str, Any]) -> Credential:
    """The password the role has now: the store's credential must be the one the block describes."""
    credential = Credential.from_secret(await runtime.secrets.get(ReplicaNames.of(peer.id).secret_path))
    if credential is None or credential.expires_at.isoformat() != block.get("expires_at"):
        raise ServiceUnavailable(
            "The replication credential is not in the secret store; retry the setup or reissue it",
            code="CREDENTIAL_UNAVAILABLE",
        )
    return credential


async def _claim(
    session: AsyncSession, *, peer: FederationPeer, via: str, expires_at: str, repeat: bool
) -> dict[str, Any]:
    """Record the delivery, guarded in SQL: only one caller finds the block still undelivered."""
    undelivered: ColumnElement[bool] = metadata.field("delivered_at").is_(None)
    if repeat:
        undelivered = or_(undelivered, metadata.field("delivered_via") == VIA_ACCEPT)
    claimed = await metadata.update_block(
        session,
        peer_id=peer.id,
        set_={"delivered_at": utcnow().isoformat(), "delivered_via": via},
        where=(
            FederationPeer.status.in_(DELIVERY_STATUSES),
            metadata.field("state") == "ready",
            metadata.field("expires_at") == expires_at,  # not rotated since the block was read
            undelivered,
        ),
    )
    if claimed is None:
        raise AlreadyDelivered(ALREADY_DELIVERED)
    return claimed


async def deliver(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer, via: str
) -> ClusterPgBlock:
    """The block with its password; the delivery is recorded in the caller's transaction."""
    block, repeat = _deliverable(peer, via)
    credential = await _stored(runtime, peer, block)
    claimed = await _claim(session, peer=peer, via=via, expires_at=block["expires_at"], repeat=repeat)
    await audit_service.record(
        session,
        actor=f"peer:{peer.id}",
        action="child.replication_credential",
        target=str(peer.id),
        details={"via": via},
    )
    redis_url = redis_acl.member_url(
        runtime.settings, username=credential.username, password=credential.redis_password
    )
    return ClusterPgBlock.model_validate({**claimed, "password": credential.password, "redis_url": redis_url})


async def fetch_credential(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer
) -> ReplicationCredential:
    """`GET replication_credential`: the credential once, the delivery committed before it is sent."""
    block = await deliver(session, runtime=runtime, peer=peer, via="replication_credential")
    await session.commit()
    return ReplicationCredential.model_validate(block.model_dump())

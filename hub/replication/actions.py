"""What an operator can do about a child's replication: re-run the setup, reissue the credential."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.exceptions import Conflict, HubError, ServiceUnavailable, Unprocessable
from hub.federation.peers import service as peers_service
from hub.federation.peers.models import FederationPeer
from hub.outbox import service as outbox_service
from hub.replication import janitor
from hub.replication import jobs as replication_jobs
from hub.replication.exceptions import NotClusterMember, SetupFailed
from hub.replication.service import PgReplicaSetupService
from hub.runtime import HubRuntime


class ReplicationView(BaseModel):
    """What the operator's calls answer: `metadata.cluster_pg` (never a password), a retry's job id."""

    child_id: str
    cluster_pg: dict[str, Any] | None = None
    job_id: str | None = None


async def _member_or_raise(session: AsyncSession, *, peer_id: str) -> FederationPeer:
    """404 for no such child, 409 for one that is not a cluster_member or is revoked."""
    peer = await peers_service.get_child_or_raise(session, peer_id=peer_id)
    if peer.spawn_mode != "cluster_member":
        raise NotClusterMember(f"Child {peer.id} is a {peer.spawn_mode}, not a cluster_member")
    if peer.status == "revoked":
        raise Conflict(f"Child {peer.id} is revoked", code="REVOKED")
    return peer


async def retry_setup(
    session: AsyncSession, *, runtime: HubRuntime, peer_id: str, actor: str
) -> ReplicationView:
    """Enqueue the setup job again; it finishes what is missing and changes nothing that is right."""
    peer = await _member_or_raise(session, peer_id=peer_id)
    expired = await session.scalar(
        select(janitor.token_expired_unaccepted()).where(FederationPeer.id == peer.id)
    )
    if expired:
        raise Conflict(
            f"The acceptance token of child {peer.id} expired unaccepted; rotate it, then retry",
            code="TOKEN_EXPIRED",
        )
    entry = await replication_jobs.request_setup(session, peer_id=peer.id)
    job_id = f"outbox:{entry}"
    await audit_service.record(
        session,
        actor=actor,
        action="child.replication.retry",
        target=str(peer.id),
        details={"job_id": job_id},
    )
    await session.commit()
    await outbox_service.dispatch_now(runtime, [entry])
    return ReplicationView(child_id=str(peer.id), cluster_pg=peer.metadata_.get("cluster_pg"), job_id=job_id)


def _unavailable(failure: SetupFailed) -> HubError:
    if failure.transient:
        return ServiceUnavailable(failure.reason, code="REPLICATION_UNAVAILABLE")
    return Unprocessable(failure.reason, code="REISSUE_FAILED")


async def reissue(session: AsyncSession, *, runtime: HubRuntime, peer_id: str, actor: str) -> ReplicationView:
    """Rotate the replication password and allow one more delivery of it."""
    peer = await _member_or_raise(session, peer_id=peer_id)
    try:
        block = await PgReplicaSetupService(runtime).rotate_credential(peer_id=peer.id)
    except SetupFailed as failure:
        raise _unavailable(failure) from None
    if block is None:
        raise Conflict(
            f"The replication setup of child {peer.id} is not ready; retry it first", code="NOT_READY"
        )
    await audit_service.record(session, actor=actor, action="child.replication.reissue", target=str(peer.id))
    await session.commit()
    return ReplicationView(child_id=str(peer.id), cluster_pg=block)

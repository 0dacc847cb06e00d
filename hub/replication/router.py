"""Replication over HTTP: the operator's retry and reissue, the member's one-time credential fetch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from hub.dependencies import OperatorT, RuntimeDep, SessionDep, require
from hub.federation.peering import service as peering_service
from hub.federation.peering.router import IdentityDep
from hub.operators import permissions
from hub.replication import actions, delivery
from hub.replication.actions import ReplicationView
from hub.wire import Envelope, envelope
from shared_contract.replication import ReplicationCredential

router = APIRouter(prefix="/system/federation/children", tags=["children"])
federation_router = APIRouter(prefix="/system/federation_api", tags=["federation"])
Manager = Annotated[OperatorT, Depends(require(permissions.CHILDREN_MANAGE))]


@router.post("/{child_id}/replication/retry", status_code=202, response_model=Envelope[ReplicationView])
async def retry(child_id: str, session: SessionDep, runtime: RuntimeDep, operator: Manager) -> dict:
    """Re-enqueue the replica setup job (idempotent); answers with metadata.cluster_pg as it is now."""
    view = await actions.retry_setup(session, runtime=runtime, peer_id=child_id, actor=operator.actor)
    return envelope(view)


@router.post("/{child_id}/replication/reissue", status_code=200, response_model=Envelope[ReplicationView])
async def reissue(child_id: str, session: SessionDep, runtime: RuntimeDep, operator: Manager) -> dict:
    """Rotate the replication password and let the member fetch it once more."""
    view = await actions.reissue(session, runtime=runtime, peer_id=child_id, actor=operator.actor)
    return envelope(view)


@federation_router.get(
    "/replication_credential", status_code=200, response_model=Envelope[ReplicationCredential]
)
async def replication_credential(identity: IdentityDep, session: SessionDep, runtime: RuntimeDep) -> dict:
    """The cluster_member's replication credential, once: 425 NOT_READY before, 409 after."""
    peer = await peering_service.authenticate(session, identity=identity, statuses=delivery.DELIVERY_STATUSES)
    credential = await delivery.fetch_credential(session, runtime=runtime, peer=peer)
    return envelope(credential)

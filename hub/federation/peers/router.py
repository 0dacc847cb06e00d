"""Operator API: every peer row (children and the parent), and `peer.revoke!` from either side."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from hub.dependencies import OperatorT, RuntimeDep, SessionDep, require
from hub.federation.peers import service as peers_service
from hub.federation.peers.schemas import PeerList, PeerSummary
from hub.operators import permissions
from hub.spawn.schemas import RevokeRequest
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/federation/peers", tags=["peers"])


@router.get("", response_model=Envelope[PeerList])
async def list_peers(
    session: SessionDep,
    operator: Annotated[OperatorT, Depends(require(permissions.CHILDREN_READ))],
    spawn_role: Annotated[str | None, Query(max_length=16)] = None,
    status: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=peers_service.MAX_PAGE)] = 100,
) -> dict:
    """Every peer row, newest first: on a child, its parent is the `spawn_role: child` row."""
    peers = await peers_service.list_peers(
        session, spawn_role=spawn_role, statuses=peers_service.parse_statuses(status), limit=limit
    )
    views = [peers_service.peer_summary(p) for p in peers]
    return envelope(PeerList(peers=views, count=len(views)))


@router.post("/{peer_id}/revoke", response_model=Envelope[dict[str, PeerSummary]])
async def revoke(
    peer_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    operator: Annotated[OperatorT, Depends(require(permissions.PEERS_MANAGE))],
    request: Annotated[RevokeRequest | None, Body()] = None,
) -> dict:
    """The hard break with any peer (a child may revoke its parent); the other side is told; 409
    if already revoked."""
    peer = await peers_service.revoke_peer(
        session,
        runtime=runtime,
        peer=await peers_service.get_peer_or_raise(session, peer_id=peer_id),
        reason=request.reason if request else None,
        actor=operator.actor,
    )
    return envelope({"peer": peers_service.peer_summary(peer)})

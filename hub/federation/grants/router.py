"""Operator API: the grants editor, and reading a child through the grant we hold on it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query

from hub.dependencies import OperatorT, RuntimeDep, SessionDep, require
from hub.federation.grants import remote
from hub.federation.grants import service as grants_service
from hub.federation.grants.schemas import GrantEnvelope, GrantList, RevokeGrantRequest
from hub.federation.peers import service as peers_service
from hub.operators import permissions
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/federation", tags=["grants"])
Reader = Annotated[OperatorT, Depends(require(permissions.GRANTS_READ))]
Manager = Annotated[OperatorT, Depends(require(permissions.GRANTS_MANAGE))]
ChildrenReader = Annotated[OperatorT, Depends(require(permissions.CHILDREN_READ))]


@router.get("/grants", response_model=Envelope[GrantList])
async def list_grants(
    session: SessionDep,
    operator: Reader,
    resource_kind: Annotated[str | None, Query(max_length=64)] = None,
    peer_id: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(pattern="^(active|expired|revoked|archived)$")] = None,
    direction: Annotated[str | None, Query(pattern="^(held|granted)$")] = None,
    limit: Annotated[int, Query(ge=1, le=grants_service.MAX_PAGE)] = 100,
) -> dict:
    """Grants held and granted, newest first, by resource kind, peer and state."""
    grants = await grants_service.get_all(
        session, resource_kind=resource_kind, peer_id=peer_id, state=state, direction=direction, limit=limit
    )
    views = [peers_service.grant_view(g) for g in grants]
    return envelope(GrantList(grants=views, count=len(views)))


@router.post("/grants/{grant_id}/revoke", response_model=Envelope[GrantEnvelope])
async def revoke_grant(
    grant_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    operator: Manager,
    request: Annotated[RevokeGrantRequest | None, Body()] = None,
) -> dict:
    """Revoke a grant (a child emancipates itself; a parent gives up its rights); 409 if not live."""
    grant = await grants_service.revoke(
        session,
        runtime=runtime,
        grant_id=grant_id,
        reason=request.reason if request else None,
        actor=operator.actor,
    )
    return envelope(GrantEnvelope(grant=peers_service.grant_view(grant)))


@router.get("/children/{child_id}/remote/{resource}", response_model=Envelope[dict[str, Any]])
async def read_child(
    child_id: str,
    resource: Literal["peer", "intervention_policies", "audit_events"],
    runtime: RuntimeDep,
    operator: ChildrenReader,
) -> dict:
    """Read a child's federation API under our grant (audit_events needs admin scope and manage)."""
    read = remote.REMOTE_READS[resource]
    if grants_service.ACTION_SCOPES[read.action] == "admin":
        operator.require(permissions.CHILDREN_MANAGE)
    data = await remote.call_child(
        runtime,
        peer_id=peers_service.parse_peer_id(child_id),
        method=read.method,
        path=read.path,
        schema=read.schema,
    )
    return envelope(data)

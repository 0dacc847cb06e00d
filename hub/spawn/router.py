"""Operator API: spawn a child and manage the children (wire-compat paths)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from hub.dependencies import OperatorT, RuntimeDep, SessionDep, require
from hub.federation.peers import listing
from hub.federation.peers import service as peers_service
from hub.federation.peers.schemas import ChildEnvelope, ChildList
from hub.operators import permissions
from hub.provisioning.service import CONSOLE_MAX_LINES
from hub.spawn import service as spawn_service
from hub.spawn.schemas import NodeConsole, RevokeRequest, RotateTokenRequest, SpawnRequest, SpawnResponse
from hub.wire import Envelope, PagedEnvelope, envelope

router = APIRouter(prefix="/system/federation/children", tags=["children"])
Reader = Annotated[OperatorT, Depends(require(permissions.CHILDREN_READ))]
Spawner = Annotated[OperatorT, Depends(require(permissions.CHILDREN_SPAWN))]
Manager = Annotated[OperatorT, Depends(require(permissions.CHILDREN_MANAGE))]


@router.post("/spawn", status_code=201, response_model=Envelope[SpawnResponse])
async def spawn(request: SpawnRequest, session: SessionDep, runtime: RuntimeDep, operator: Spawner) -> dict:
    """Spawn a child: peer `proposed`, a single-use token (shown once), the payload handed off."""
    result = await spawn_service.spawn(
        session, runtime=runtime, request=request, actor=operator.actor, initiated_by=operator.id
    )
    child = await peers_service.detail(session, result.peer)
    return envelope(
        SpawnResponse(child=child, acceptance_token=result.token, spawn_payload=result.payload_view())
    )


@router.get("", response_model=PagedEnvelope[ChildList])
async def list_children(
    session: SessionDep,
    operator: Reader,
    spawn_mode: str | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=listing.MAX_PAGE)] = listing.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=listing.MAX_CURSOR)] = None,
) -> dict:
    """List the children this hub spawned, newest first (keyset pagination). The hub answers this
    on its raw path (listing.serve_raw); this route answers what that one leaves to it."""
    query = listing.page_query(spawn_mode=spawn_mode, status=status, limit=limit, cursor=cursor)
    sql, args = query.statement()
    rows = (await (await session.connection()).exec_driver_sql(sql, tuple(args))).all()
    return listing.page(list(rows), query)


@router.get("/{child_id}", response_model=Envelope[ChildEnvelope])
async def show(child_id: str, session: SessionDep, runtime: RuntimeDep, operator: Reader) -> dict:
    """One child: status, heartbeat, metadata.cluster_pg, grants, node instance, open findings."""
    peer = await peers_service.get_child_or_raise(session, peer_id=child_id)
    await spawn_service.refresh_node(session, runtime=runtime, peer=peer)
    return envelope(ChildEnvelope(child=await peers_service.detail(session, peer)))


@router.get("/{child_id}/console", response_model=Envelope[dict[str, NodeConsole]])
async def console(
    child_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    operator: Reader,
    lines: Annotated[int, Query(ge=1, le=CONSOLE_MAX_LINES)] = 100,
) -> dict:
    """The tail of the child's node console (a QEMU guest's serial port), secrets redacted."""
    peer = await peers_service.get_child_or_raise(session, peer_id=child_id)
    return envelope(
        {"console": await spawn_service.node_console(session, runtime=runtime, peer=peer, lines=lines)}
    )


@router.delete("/{child_id}/node", response_model=Envelope[dict[str, NodeConsole]])
async def destroy_node(child_id: str, session: SessionDep, runtime: RuntimeDep, operator: Manager) -> dict:
    """Power the child's node off and remove it (its work directory with it); the peer row stays."""
    peer = await peers_service.get_child_or_raise(session, peer_id=child_id)
    await spawn_service.destroy_node(session, runtime=runtime, peer=peer, actor=operator.actor)
    return envelope(
        {"console": await spawn_service.node_console(session, runtime=runtime, peer=peer, lines=1)}
    )


@router.post("/{child_id}/revoke", response_model=Envelope[ChildEnvelope])
async def revoke(
    child_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    operator: Manager,
    request: Annotated[RevokeRequest | None, Body()] = None,
) -> dict:
    """The hard break: token and certificate dead, grants revoked; 409 if already revoked."""
    peer = await spawn_service.revoke(
        session,
        runtime=runtime,
        peer_id=child_id,
        reason=request.reason if request else None,
        actor=operator.actor,
    )
    # The full child view, as show answers (the original returns it too).
    return envelope(ChildEnvelope(child=await peers_service.detail(session, peer)))


@router.post("/{child_id}/rotate_token", response_model=Envelope[SpawnResponse])
async def rotate_token(
    child_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    operator: Manager,
    request: Annotated[RotateTokenRequest | None, Body()] = None,
) -> dict:
    """A new acceptance token (old one dead at once), payload re-injected; while proposed, or accepted
    and never enrolled (the child lost the accept's answer and starts over)."""
    result = await spawn_service.rotate_token(
        session,
        runtime=runtime,
        peer_id=child_id,
        request=request or RotateTokenRequest(),
        actor=operator.actor,
    )
    child = await peers_service.detail(session, result.peer)
    return envelope(
        SpawnResponse(child=child, acceptance_token=result.token, spawn_payload=result.payload_view())
    )

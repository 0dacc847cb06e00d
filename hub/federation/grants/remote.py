"""The parent acting on a child under its grant: the call, and what the child's refusal means here.

A 401 `GRANT_REVOKED` is emancipation (a `peer_grant_revoked` finding, the child shown as
emancipated, the peer still active); `GRANT_EXPIRED` opens a `peer_grant_expired` finding;
`PEER_REVOKED` means the child revoked the peering, and we mirror it.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from hub.database import session_scope
from hub.exceptions import Conflict, NotFound
from hub.federation.grants import client
from hub.federation.grants import service as grants_service
from hub.federation.grants.exceptions import ChildRefused, ChildUnreachable
from hub.federation.peers import service as peers_service
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime

CALLABLE_STATUSES = ("enrolled", "active", "degraded")
PEER_REVOKED = "PEER_REVOKED"


@dataclass(frozen=True)
class RemoteAction:
    method: str
    path: str
    action: str


# What the parent's operator can read on a child through the operator API (the grant decides).
REMOTE_READS: dict[str, RemoteAction] = {
    "peer": RemoteAction("GET", "/peer", "system.peer.read"),
    "intervention_policies": RemoteAction(
        "GET", "/intervention_policies", "system.intervention_policies.read"
    ),
    "audit_events": RemoteAction("GET", "/audit_events", "system.audit.read"),
}


async def call_child(
    runtime: HubRuntime,
    *,
    peer_id: uuid.UUID,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Call a live child we spawned, with our client certificate and, if we hold one, the bearer."""
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, peer_id)
        if peer is None or peer.spawn_role != "parent":
            raise NotFound(f"Child {peer_id} not found")
        if peer.status not in CALLABLE_STATUSES:
            raise Conflict(f"Child {peer.id} is {peer.status}: it cannot be called", code="PEER_NOT_LIVE")
        credential = await grants_service.held_credential(session, secrets=runtime.secrets, peer_id=peer.id)
    bearer = credential.bearer if credential else None
    try:
        data = await client.call(runtime, peer=peer, method=method, path=path, bearer=bearer, body=body)
    except client.CallFailed as e:
        if e.status == 401:
            await _refused(runtime, peer=peer, code=e.code, message=e.message, under_grant=bearer is not None)
        if e.status is None:
            raise ChildUnreachable(f"{peer.name}: {e.message}", details={"code": e.code}) from e
        raise ChildRefused(
            f"{peer.name} refused the call: {e.message}", details={"status": e.status, "code": e.code}
        ) from e
    if credential is not None:
        async with session_scope(runtime.sessionmaker) as session:
            await grants_service.record_success(session, peer=peer)
    return data


async def _refused(
    runtime: HubRuntime, *, peer: FederationPeer, code: str, message: str, under_grant: bool
) -> None:
    if code == PEER_REVOKED:
        async with runtime.sessionmaker() as session:
            with contextlib.suppress(Conflict):  # it told us already
                await peers_service.revoke_peer(
                    session,
                    runtime=runtime,
                    peer=peer,
                    reason="revoked by the peer",
                    actor=f"peer:{peer.id}",
                    notify=False,
                )
        return
    if under_grant:
        async with session_scope(runtime.sessionmaker) as session:
            await grants_service.record_refusal(session, peer=peer, code=code, message=message)

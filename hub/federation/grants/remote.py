"""The parent acting on a child under its grant: the call, and what the child's refusal means here.

A 401 `GRANT_REVOKED` is emancipation (a `peer_grant_revoked` finding, the child shown as
emancipated, the peer still active); `GRANT_EXPIRED` opens a `peer_grant_expired` finding;
`PEER_REVOKED` means the child revoked the peering, and we mirror it.

What the child answers is checked against the schema of that call and re-serialized from the
model: a viewer of `/children/{id}/remote/*` never gets the child's raw body. An endpoint or CA we
will not call (not https, not a CA, a certificate it does not verify) is a 409 `ChildUntrusted`
and an open `peer_endpoint_untrusted` finding, not a retry.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from hub.database import session_scope
from hub.exceptions import Conflict, NotFound
from hub.federation.findings import service as findings_service
from hub.federation.grants import client
from hub.federation.grants import service as grants_service
from hub.federation.grants.exceptions import ChildRefused, ChildUnreachable, ChildUntrusted
from hub.federation.peers import service as peers_service
from hub.federation.peers.models import FederationPeer
from hub.federation.peers.schemas import ChildDetail
from hub.federation.policies.schemas import PolicyList
from hub.runtime import HubRuntime

CALLABLE_STATUSES = ("enrolled", "active", "degraded")
PEER_REVOKED = "PEER_REVOKED"
ENDPOINT_UNTRUSTED = "peer_endpoint_untrusted"


class RemotePeer(BaseModel):
    peer: ChildDetail


class RemoteAuditEvent(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str | None
    details: dict[str, Any] | None


class RemoteAuditEvents(BaseModel):
    events: list[RemoteAuditEvent]


@dataclass(frozen=True)
class RemoteAction:
    method: str
    path: str
    action: str
    schema: type[BaseModel]


# What the parent's operator can read on a child through the operator API (the grant decides).
REMOTE_READS: dict[str, RemoteAction] = {
    "peer": RemoteAction("GET", "/peer", "system.peer.read", RemotePeer),
    "intervention_policies": RemoteAction(
        "GET", "/intervention_policies", "system.intervention_policies.read", PolicyList
    ),
    "audit_events": RemoteAction("GET", "/audit_events", "system.audit.read", RemoteAuditEvents),
}


async def call_child(
    runtime: HubRuntime,
    *,
    peer_id: uuid.UUID,
    method: str,
    path: str,
    schema: type[BaseModel],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Call a live child we spawned, with our client certificate and, if we hold one, the bearer;
    its answer as `schema` parses it (ChildRefused when it does not)."""
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
        if e.code in client.UNTRUSTED_CODES:
            await _untrusted(runtime, peer=peer, code=e.code, message=e.message)
            raise ChildUntrusted(f"{peer.name}: {e.message}", details={"code": e.code}) from e
        if e.status == 401:
            await _refused(runtime, peer=peer, code=e.code, message=e.message, under_grant=bearer is not None)
        if e.status is None:
            raise ChildUnreachable(f"{peer.name}: {e.message}", details={"code": e.code}) from e
        raise ChildRefused(
            f"{peer.name} refused the call ({e.code})", details={"status": e.status, "code": e.code}
        ) from e
    try:
        parsed = schema.model_validate(data)
    except ValidationError as e:
        raise ChildRefused(
            f"{peer.name} answered {path} with data that does not match its schema",
            details={"code": "INVALID_RESPONSE"},
        ) from e
    async with session_scope(runtime.sessionmaker) as session:
        await findings_service.resolve(session, kind=ENDPOINT_UNTRUSTED, subjects=[str(peer.id)])
        if credential is not None:
            await grants_service.record_success(session, peer=peer)
    return parsed.model_dump(mode="json")


async def _untrusted(runtime: HubRuntime, *, peer: FederationPeer, code: str, message: str) -> None:
    async with session_scope(runtime.sessionmaker) as session:
        await findings_service.open_finding(
            session,
            kind=ENDPOINT_UNTRUSTED,
            subject=str(peer.id),
            peer_id=peer.id,
            message=message,
            details={"code": code},
        )


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

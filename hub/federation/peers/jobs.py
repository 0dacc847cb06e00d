"""arq job of the peering itself: telling the other side that we revoked it (`peer.revoke!`).

Either side may revoke. The side that did tells the other with `POST federation_api/revoke` and
its client certificate, so the other side revokes its row and grants too and stops calling (a
child stops heartbeating). Best effort with retries while the other side is unreachable; if it
never hears, its calls keep getting 401, and a parent that gets `PEER_REVOKED` mirrors it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry
from sqlalchemy.ext.asyncio import AsyncSession

from hub.federation import bootstrap
from hub.federation.grants import client as grants_client
from hub.federation.peering.client import PeerCallFailed, PeerClient
from hub.federation.peers.models import FederationPeer
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime
from hub.spawn.schemas import RevokeRequest

log = logging.getLogger(__name__)

REVOKE_NOTICE_JOB = "federation_peer_revoke_notice"
MAX_TRIES = 6


async def request_revoke_notice(session: AsyncSession, *, peer_id: uuid.UUID) -> uuid.UUID:
    """In the revoke's own transaction (hub.outbox), so a crash after the commit still tells it."""
    return await outbox_service.add(
        session,
        job=REVOKE_NOTICE_JOB,
        kwargs={"peer_id": str(peer_id)},
        key=f"{REVOKE_NOTICE_JOB}:{peer_id}",
    )


async def _tell(runtime: HubRuntime, peer: FederationPeer, notice: RevokeRequest) -> None:
    if peer.spawn_role == "child":  # the row is our parent: we call with the certificate it gave us
        credentials = bootstrap.parent_credentials(peer)
        if credentials is None:
            raise grants_client.CallFailed(None, "NO_FEDERATION_ENDPOINT", "no credentials for our parent")
        async with PeerClient(credentials) as parent:
            await parent.call("POST", "/revoke", notice)
    else:
        await grants_client.call(runtime, peer=peer, method="POST", path="/revoke", body=notice.model_dump())


async def federation_peer_revoke_notice(ctx: dict[str, Any], *, peer_id: str) -> str:
    runtime: HubRuntime = ctx["runtime"]
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, uuid.UUID(peer_id))
    if peer is None or peer.status != "revoked":
        return "not revoked here"
    try:
        await _tell(runtime, peer, RevokeRequest(reason=peer.revoke_reason))
    except (PeerCallFailed, grants_client.CallFailed) as e:
        code = getattr(e, "code", None)
        job_try = ctx.get("job_try", 1)
        if e.status is None and code not in grants_client.UNTRUSTED_CODES and job_try < MAX_TRIES:
            raise Retry(defer=min(60.0, 2.0**job_try)) from None
        log.info("peer %s was not told of its revocation: %s %s", peer.id, e.status or "", e.message)
        return f"not told: {e.status or code}"
    return "told"

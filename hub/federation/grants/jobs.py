"""Grant jobs: the retention purge, the probe that notices a child's emancipation, and telling a
child that we gave up the grant we held on it.

The probe reads each managed child's `peer` under our grant once per findings period, so a
child that revoked the grant shows as emancipated (with a `peer_grant_revoked` finding) without
waiting for the parent's next push or operator action.

The revoke notice comes from the outbox (hub.outbox): it is retried, with backoff, until the child
answered, and a `grant_revoke_undelivered` finding stays open meanwhile. The child is called with
our client certificate only: we deleted the bearer when we revoked the grant.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from arq import Retry
from sqlalchemy import select

from hub.database import session_scope, utcnow
from hub.exceptions import HubError
from hub.federation.accept import service as accept_service
from hub.federation.grants import client as grants_client
from hub.federation.grants import remote
from hub.federation.grants import service as grants_service
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime

log = logging.getLogger(__name__)

PURGE_JOB = "federation_grant_purge"
PROBE_JOB = "federation_grant_probe"
PROBE_CONCURRENCY = 8


async def federation_grant_purge(ctx: dict[str, Any]) -> dict[str, int]:
    runtime: HubRuntime = ctx["runtime"]
    async with session_scope(runtime.sessionmaker) as session:
        result = await grants_service.purge(
            session,
            secrets=runtime.secrets,
            retention_days=runtime.settings.federation.grant_retention_days,
            now=utcnow(),
        )
    if any(result.values()):
        log.info("grant purge: %s", result)
    return result


async def _probed(runtime: HubRuntime) -> list[uuid.UUID]:
    """Managed children, not emancipated, on which we hold a live grant."""
    now = utcnow()
    async with runtime.sessionmaker() as session:
        rows = await session.scalars(
            select(FederationPeer.id)
            .join(FederationGrant, FederationGrant.peer_id == FederationPeer.id)
            .where(
                FederationPeer.spawn_role == "parent",
                FederationPeer.status.in_(remote.CALLABLE_STATUSES),
                FederationPeer.emancipated_at.is_(None),
                FederationGrant.direction == "held",
                FederationGrant.revoked_at.is_(None),
                FederationGrant.archived_at.is_(None),
                FederationGrant.expires_at > now,
            )
            .distinct()
        )
        return list(rows.all())


async def federation_grant_probe(ctx: dict[str, Any]) -> dict[str, int]:
    runtime: HubRuntime = ctx["runtime"]
    limit = asyncio.Semaphore(PROBE_CONCURRENCY)
    read = remote.REMOTE_READS["peer"]

    async def probe(peer_id: uuid.UUID) -> bool:
        async with limit:
            try:
                await remote.call_child(
                    runtime, peer_id=peer_id, method=read.method, path=read.path, schema=read.schema
                )
            except HubError:
                return False
            return True

    results = await asyncio.gather(*(probe(p) for p in await _probed(runtime)))
    return {"probed": len(results), "refused_or_unreachable": results.count(False)}


async def federation_grant_revoke_notice(ctx: dict[str, Any], *, grant_id: str, peer_id: str) -> str:
    runtime: HubRuntime = ctx["runtime"]
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, uuid.UUID(peer_id))
    if peer is None or peer.status == "revoked":
        return "the peering is gone"
    try:
        await grants_client.call(runtime, peer=peer, method="POST", path=f"/grants/{grant_id}/revoke")
    except grants_client.CallFailed as e:
        if e.status is None or e.status >= 500 or (e.status == 401 and e.code != "PEER_REVOKED"):
            async with session_scope(runtime.sessionmaker) as session:
                await grants_service.record_notice(
                    session, peer=peer, grant_id=grant_id, delivered=False, problem=f"{e.code}: {e.message}"
                )
            job_try = ctx.get("job_try", 1)
            raise Retry(defer=min(runtime.settings.outbox.max_backoff_seconds, 2.0**job_try)) from None
        log.info("grant %s revoke notice refused by %s: %s %s", grant_id, peer.id, e.status, e.code)
    async with session_scope(runtime.sessionmaker) as session:
        await grants_service.record_notice(session, peer=peer, grant_id=grant_id, delivered=True)
    return "told"


async def federation_grant_forget_unclaimed_bearer(ctx: dict[str, Any], *, grant_id: str) -> str:
    """A spawn stored a held grant's bearer and died before its commit: the secret goes."""
    return await accept_service.forget_unclaimed_bearer(ctx["runtime"], grant_id=uuid.UUID(grant_id))

"""The parent's push of its `system.*` policies to a managed child, under the operator grant."""

from __future__ import annotations

import uuid
from typing import Any

from hub.database import session_scope, utcnow
from hub.federation.grants import remote
from hub.federation.grants.exceptions import NoLiveGrant
from hub.federation.peers.models import FederationPeer
from hub.federation.policies import service as policies_service
from hub.federation.policies.schemas import CascadedPolicy, CascadeRequest, CascadeResult
from hub.runtime import HubRuntime


async def push(runtime: HubRuntime, *, peer_id: uuid.UUID) -> dict[str, Any]:
    """PUT our current cascaded set on the child; what it answered, or why nothing was pushed.

    ChildUnreachable propagates (the job retries); a refusal is recorded by `remote` (a revoked
    grant is emancipation) and ends the push.
    """
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, peer_id)
        if peer is None or not policies_service.pushes_to(peer):
            return {"skipped": "not a managed child we may push to"}
        generated_at = utcnow()
        selection = await policies_service.cascade_selection(session, peer=peer)
    request = CascadeRequest(
        generated_at=generated_at,
        policies=[
            CascadedPolicy(
                id=p.id,
                action_pattern=p.action_pattern,
                decision=p.decision,
                scope_tags=p.scope_tags,
                description=p.description,
            )
            for p in selection
        ],
    )
    try:
        answer = await remote.call_child(
            runtime,
            peer_id=peer.id,
            method="PUT",
            path="/intervention_policies",
            schema=CascadeResult,
            body=request.model_dump(mode="json"),
        )
    except NoLiveGrant:
        return {"skipped": "no live grant"}
    async with session_scope(runtime.sessionmaker) as session:
        await policies_service.merge_metadata(
            session,
            peer_id=peer.id,
            key="policy_cascade",
            value={
                "pushed_at": utcnow().isoformat(),
                "generated_at": generated_at.isoformat(),
                "policies": len(selection),
            },
        )
    return answer

"""cluster_member replication: what the accept response carries (the full job lands separately)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime


async def accept_additions(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer
) -> dict[str, Any]:
    """The accept response's cluster_member part: the parent's Redis, for the member's workers."""
    additions: dict[str, Any] = {}
    redis_url = runtime.settings.redis.advertised_url
    if redis_url:
        additions["redis_url"] = redis_url
    return additions

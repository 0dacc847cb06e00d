"""`metadata.cluster_pg` on the child's peer row, changed in SQL so concurrent writers lose no key.

The block holds names, endpoints, states and timestamps; never the password (that is only in the
secret store). Each change is one guarded `UPDATE … RETURNING`: the caller's conditions decide in
the database whether it applies, not a read in Python before the write.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, literal, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from hub.database import utcnow
from hub.federation.peers.models import FederationPeer

NOT_REVOKED = FederationPeer.status != "revoked"


def field(name: str) -> ColumnElement[str]:
    """`metadata->'cluster_pg'->>name`: NULL when the key is missing or JSON null."""
    return FederationPeer.metadata_["cluster_pg"][name].astext


def _merged(set_: dict[str, Any], unset: tuple[str, ...]) -> ColumnElement[Any]:
    block: ColumnElement[Any] = func.coalesce(
        FederationPeer.metadata_["cluster_pg"], cast(literal("{}"), JSONB)
    )
    if unset:
        block = block.op("-", return_type=JSONB)(literal(list(unset), ARRAY(String)))
    block = block.op("||", return_type=JSONB)(literal(set_, JSONB))
    return FederationPeer.metadata_.op("||", return_type=JSONB)(func.jsonb_build_object("cluster_pg", block))


async def update_block(
    session: AsyncSession,
    *,
    peer_id: uuid.UUID,
    set_: dict[str, Any],
    unset: tuple[str, ...] = (),
    where: tuple[ColumnElement[bool], ...] = (),
) -> dict[str, Any] | None:
    """Merge `set_` into a cluster_member's block, drop `unset`; the new block, or None if no row matched."""
    return await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer_id, FederationPeer.spawn_mode == "cluster_member", *where)
        .values(metadata_=_merged(set_, unset), updated_at=utcnow())
        .returning(FederationPeer.metadata_["cluster_pg"])
        # The expression cannot be evaluated in Python; leave loaded rows alone rather than expire
        # them (an expired attribute would lazy-load, which async sessions refuse).
        .execution_options(synchronize_session=False)
    )

"""Watching nodes: their state follows what the provisioner sees, and a guest that never accepts
gets a finding that points the operator at its console."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.database import utcnow
from hub.federation.findings import service as findings_service
from hub.federation.findings.models import Finding
from hub.federation.peers.models import FederationPeer
from hub.provisioning import service as provisioning_service
from hub.provisioning.models import NodeInstance

NOT_ACCEPTING = "node_not_accepting"
# A guest's first boot under TCG on a busy host takes minutes: only a node up this long without the
# child accepting is stuck (one that stopped or failed is reported at once).
ACCEPT_PATIENCE_S = 900.0
_PENDING_STATUSES = ("proposed", "accepted", "enrolled")  # not yet active: the node must be up
_WATCHED_STATES = ("booting", "running", "stopped", "failed")


async def sweep_nodes(session: AsyncSession, *, settings: Settings) -> dict[str, int]:
    """Refresh watched nodes of children not yet active; open a finding for each whose node stopped
    or failed first, or that has run ACCEPT_PATIENCE_S without the child accepting."""
    rows = (
        await session.execute(
            select(NodeInstance, FederationPeer.id, FederationPeer.name, FederationPeer.status)
            .join(FederationPeer, FederationPeer.node_instance_id == NodeInstance.id)
            .where(
                FederationPeer.spawn_role == "parent",
                FederationPeer.status.in_(_PENDING_STATUSES),
                NodeInstance.provider.in_(provisioning_service.WATCHED_PROVIDERS),
                NodeInstance.state.in_(_WATCHED_STATES),
            )
        )
    ).all()
    patience = timedelta(seconds=ACCEPT_PATIENCE_S)
    stuck = []
    for node, peer_id, name, status in rows:
        changes = await provisioning_service.observe(settings, node)
        if changes:
            await session.execute(
                update(NodeInstance).where(NodeInstance.id == node.id).values(updated_at=utcnow(), **changes)
            )
        state = str(changes.get("state", node.state))
        down = state in ("stopped", "failed")
        if down or (status == "proposed" and node.created_at < utcnow() - patience):
            stuck.append(str(peer_id))
            await findings_service.open_finding(
                session,
                kind=NOT_ACCEPTING,
                subject=str(peer_id),
                peer_id=peer_id,
                message=(
                    f"The {node.provider} node of {name} is {state} and the child is {status}, not active; "
                    f"see its console: powernode-hub children console {peer_id}"
                ),
                details={
                    "node_instance_id": str(node.id),
                    "node_state": state,
                    "console": f"/api/v1/system/federation/children/{peer_id}/console",
                },
            )
    open_subjects = (
        await session.scalars(
            select(Finding.subject).where(
                Finding.kind == NOT_ACCEPTING,
                Finding.resolved_at.is_(None),
            )
        )
    ).all()
    cleared = [s for s in open_subjects if s not in stuck]
    resolved = await findings_service.resolve(session, kind=NOT_ACCEPTING, subjects=cleared) if cleared else 0
    return {"nodes_not_accepting": len(stuck), "nodes_resolved": resolved}

"""Operator API: findings, open and resolved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from hub.dependencies import OperatorT, SessionDep, require
from hub.federation.findings import service as findings_service
from hub.federation.peers.schemas import FindingView
from hub.federation.peers.service import finding_view
from hub.operators import permissions
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/federation/findings", tags=["findings"])


@router.get("", response_model=Envelope[dict[str, list[FindingView]]])
async def list_findings(
    session: SessionDep,
    operator: Annotated[OperatorT, Depends(require(permissions.FINDINGS_READ))],
    state: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    peer_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict:
    """Open and resolved findings, most recently seen first."""
    findings = await findings_service.get_all(session, state=state, kind=kind, peer_id=peer_id, limit=limit)
    return envelope({"findings": [finding_view(f) for f in findings]})

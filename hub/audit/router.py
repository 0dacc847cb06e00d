"""Operator API: the audit trail (every operator mutation, accept, enroll and revoke)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import select

from hub.audit.models import AuditEvent
from hub.dependencies import OperatorT, SessionDep, require
from hub.operators import permissions
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/audit_events", tags=["audit"])


class AuditEventView(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str | None
    outcome: str
    details: dict[str, Any]


@router.get("", response_model=Envelope[dict[str, list[AuditEventView]]])
async def list_audit_events(
    session: SessionDep,
    operator: Annotated[OperatorT, Depends(require(permissions.CHILDREN_READ))],
    target: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    """The newest audit events, optionally about one target (a child's id, a grant's id...)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if target:
        query = query.where(AuditEvent.target == target)
    events = (await session.scalars(query)).all()
    views = [
        AuditEventView(
            id=e.id,
            at=e.at.isoformat(),
            actor=e.actor,
            action=e.action,
            target=e.target,
            outcome=e.outcome,
            details=e.details or {},
        )
        for e in events
    ]
    return envelope({"events": views})

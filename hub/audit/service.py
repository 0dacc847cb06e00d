"""Audit events, written in the same transaction as the change they record."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit.models import AuditEvent


async def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    target: str | None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    session.add(AuditEvent(actor=actor, action=action, target=target, outcome=outcome, details=details or {}))


async def get_all(session: AsyncSession, *, target: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id)
    if target is not None:
        query = query.where(AuditEvent.target == target)
    return list((await session.scalars(query)).all())

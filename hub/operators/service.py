"""Operator tokens: minted once, stored as a hash, checked on every operator API call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.database import utcnow
from hub.exceptions import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from hub.operators.models import OperatorToken
from hub.operators.permissions import ALL_PERMISSIONS, ROLES
from hub.secrets import tokens

__all__ = [
    "ALL_PERMISSIONS",
    "Operator",
    "authenticate",
    "create_operator_token",
    "list_operator_tokens",
    "revoke_operator_token",
]
MAX_EXPIRY_DAYS = 3650


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    permissions: frozenset[str]

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"This operator token lacks the {permission} permission")


async def create_operator_token(
    session: AsyncSession,
    *,
    name: str,
    permissions: list[str] | None = None,
    role: str | None = None,
    expires_in_days: int | None = None,
) -> tuple[OperatorToken, str]:
    """Mint a token; the plaintext is returned here once and never stored."""
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise ValidationFailed(f"expires_in_days must be 1-{MAX_EXPIRY_DAYS}")
    granted = list(permissions or [])
    if role:
        if role not in ROLES:
            raise ValidationFailed(f"Unknown role {role!r}; roles: {', '.join(ROLES)}")
        granted = sorted({*granted, *ROLES[role]})
    unknown = sorted(set(granted) - set(ALL_PERMISSIONS))
    if unknown or not granted:
        raise ValidationFailed(
            f"Unknown or missing permissions {unknown}; choose from: {', '.join(ALL_PERMISSIONS)}"
        )
    issued = tokens.issue(tokens.OPERATOR_TOKEN_PREFIX)
    row = OperatorToken(
        name=name,
        role=role or ("operator" if set(granted) == set(ALL_PERMISSIONS) else "custom"),
        permissions=granted,
        public_id=issued.public_id,
        token_hash=issued.secret_hash,
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(row)
    await session.flush()
    return row, issued.plaintext


async def authenticate(session: AsyncSession, *, bearer: str | None) -> Operator:
    if not bearer:
        raise Unauthorized("Missing operator token (Authorization: Bearer <token>)")
    public_id = tokens.public_id_of(tokens.OPERATOR_TOKEN_PREFIX, bearer)
    row = None
    if public_id is not None:
        row = await session.scalar(
            select(OperatorToken).where(
                OperatorToken.public_id == public_id,
                OperatorToken.revoked_at.is_(None),
                or_(OperatorToken.expires_at.is_(None), OperatorToken.expires_at > utcnow()),
            )
        )
    # Unknown, wrong, revoked and expired tokens all get this one answer.
    if row is None or not tokens.matches(bearer, row.token_hash):
        raise Unauthorized("Invalid operator token")
    await session.execute(
        update(OperatorToken).where(OperatorToken.id == row.id).values(last_used_at=utcnow())
    )
    return Operator(id=str(row.id), name=row.name, permissions=frozenset(row.permissions))


async def list_operator_tokens(session: AsyncSession) -> list[OperatorToken]:
    """Every token, newest first; the rows hold a hash, never the secret."""
    return list(await session.scalars(select(OperatorToken).order_by(OperatorToken.created_at.desc())))


async def revoke_operator_token(session: AsyncSession, token_id: uuid.UUID) -> OperatorToken:
    row = await session.get(OperatorToken, token_id, with_for_update=True)
    if row is None:
        raise NotFound("No such operator token")
    if row.revoked_at is not None:
        raise Conflict("The operator token is already revoked", code="ALREADY_REVOKED")
    row.revoked_at = utcnow()
    await session.flush()
    return row


async def revoke_by_name(session: AsyncSession, name: str, *, keep: uuid.UUID) -> int:
    """Revoke the live tokens called `name` except `keep` (a rotated data-dir token's predecessors)."""
    result = await session.execute(
        update(OperatorToken)
        .where(OperatorToken.name == name, OperatorToken.id != keep, OperatorToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)

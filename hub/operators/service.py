"""Operator tokens: minted once, stored as a hash, checked on every operator API call."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.database import utcnow
from hub.exceptions import Forbidden, Unauthorized, ValidationFailed
from hub.operators.models import OperatorToken
from hub.operators.permissions import ALL_PERMISSIONS, ROLES
from hub.secrets import tokens

__all__ = ["ALL_PERMISSIONS", "Operator", "authenticate", "create_operator_token"]


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
    session: AsyncSession, *, name: str, permissions: list[str] | None = None, role: str | None = None
) -> tuple[OperatorToken, str]:
    """Mint a token; the plaintext is returned here once and never stored."""
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
                OperatorToken.public_id == public_id, OperatorToken.revoked_at.is_(None)
            )
        )
    if row is None or not tokens.matches(bearer, row.token_hash):
        raise Unauthorized("Invalid operator token")
    await session.execute(
        update(OperatorToken).where(OperatorToken.id == row.id).values(last_used_at=utcnow())
    )
    return Operator(id=str(row.id), name=row.name, permissions=frozenset(row.permissions))

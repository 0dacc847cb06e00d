"""Operator tokens: minted once, stored as a hash, checked on every operator API call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
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


# The live token with this public id and secret hash ($1, $2), as the WITH list of a statement:
# AUTHENTICATE, which the ORM path runs, and the children list's raw path, which reads its page in
# the same round trip (hub/federation/peers/listing.py). last_used_at is written at most once a
# minute: a token's use is news at that grain, and then a read stays a read (no commit to wait for).
TOKEN_CTES = """
    token AS (
        SELECT id, name, permissions, last_used_at FROM operator_token
        WHERE public_id = $1 AND token_hash = $2 AND revoked_at IS NULL
          AND (expires_at IS NULL OR expires_at > now())
    ), used AS (
        UPDATE operator_token AS o SET last_used_at = now() FROM token
        WHERE o.id = token.id
          AND (token.last_used_at IS NULL OR token.last_used_at < now() - interval '1 minute')
    )"""
# The columns operator_of reads, from `token`.
OPERATOR_COLUMNS = "token.id, token.name, ARRAY(SELECT jsonb_array_elements_text(token.permissions))"
AUTHENTICATE = f"WITH {TOKEN_CTES} SELECT {OPERATOR_COLUMNS} FROM token"  # noqa: S608 - constants


def bearer_of(authorization: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header value, else None."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def bearer_parts(bearer: str | None) -> tuple[str, str] | None:
    """The public id and secret hash of a well-formed operator token, else None."""
    public_id = tokens.public_id_of(tokens.OPERATOR_TOKEN_PREFIX, bearer) if bearer else None
    return None if public_id is None else (public_id, tokens.hash_secret(bearer or ""))


def operator_of(row: Any) -> Operator | None:
    """An Operator from a row that starts with OPERATOR_COLUMNS; None without a row."""
    if row is None:
        return None
    return Operator(id=str(row[0]), name=row[1], permissions=frozenset(row[2]))


async def authenticate(session: AsyncSession, *, bearer: str | None) -> Operator:
    if not bearer:
        raise Unauthorized("Missing operator token (Authorization: Bearer <token>)")
    parts = bearer_parts(bearer)
    operator = None
    if parts is not None:
        connection = await session.connection()
        operator = operator_of((await connection.exec_driver_sql(AUTHENTICATE, parts)).first())
    # Unknown, wrong, revoked and expired tokens all get this one answer.
    if operator is None:
        raise Unauthorized("Invalid operator token")
    return operator


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

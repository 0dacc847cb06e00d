"""Operator API: the operator tokens themselves (list without secrets, revoke)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from hub.database import utcnow
from hub.dependencies import OperatorT, SessionDep, require
from hub.operators import permissions
from hub.operators import service as operators_service
from hub.operators.models import OperatorToken
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/operator_tokens", tags=["operator tokens"])
Manager = Annotated[OperatorT, Depends(require(permissions.OPERATOR_TOKENS_MANAGE))]


class OperatorTokenView(BaseModel):
    """A token as listed: who it is for and its life, never its secret or hash."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    role: str
    permissions: list[str]
    public_id: str
    state: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: OperatorToken) -> OperatorTokenView:
        if row.revoked_at is not None:
            state = "revoked"
        elif row.expires_at is not None and row.expires_at <= utcnow():
            state = "expired"
        else:
            state = "active"
        return cls.model_validate(
            {**{k: getattr(row, k) for k in cls.model_fields if k != "state"}, "state": state}
        )


class OperatorTokenList(BaseModel):
    tokens: list[OperatorTokenView]


class OperatorTokenOne(BaseModel):
    token: OperatorTokenView


@router.get("", response_model=Envelope[OperatorTokenList])
async def list_tokens(session: SessionDep, operator: Manager) -> dict:
    """Every operator token, newest first, with its last use; no secrets."""
    rows = await operators_service.list_operator_tokens(session)
    return envelope(OperatorTokenList(tokens=[OperatorTokenView.of(r) for r in rows]))


@router.post("/{token_id}/revoke", response_model=Envelope[OperatorTokenOne])
async def revoke_token(token_id: uuid.UUID, session: SessionDep, operator: Manager) -> dict:
    """Revoke a token at once (409 if it already is): it then gets the same 401 as any bad token."""
    row = await operators_service.revoke_operator_token(session, token_id)
    await session.commit()
    return envelope(OperatorTokenOne(token=OperatorTokenView.of(row)))

"""The grants editor's requests and responses (GrantView is the one the child detail shows)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hub.federation.peers.schemas import GrantView


class RevokeGrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=1000)


class GrantList(BaseModel):
    grants: list[GrantView]
    count: int


class GrantEnvelope(BaseModel):
    grant: GrantView

"""Intervention policies on the operator API, and the set a parent pushes to a managed child."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from hub.federation.policies.patterns import ACTION_RE, PATTERN_RE

Decision = Literal["allow", "require_approval", "deny"]
ActionPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=PATTERN_RE)]
Action = Annotated[str, Field(min_length=1, max_length=200, pattern=ACTION_RE)]
ScopeTag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_\-]+$")]
ScopeTags = Annotated[list[ScopeTag], Field(max_length=16)]


class PolicyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action_pattern: ActionPattern
    decision: Decision
    scope_tags: ScopeTags = Field(default_factory=list)
    description: str = Field(default="", max_length=1000)


class PolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action_pattern: ActionPattern | None = None
    decision: Decision | None = None
    scope_tags: ScopeTags | None = None
    description: str | None = Field(default=None, max_length=1000)


class PolicyView(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    action_pattern: str
    decision: str
    origin: str
    origin_peer_id: uuid.UUID | None
    origin_policy_id: uuid.UUID | None
    scope_tags: list[str]
    overridden: bool
    description: str
    created_at: datetime
    updated_at: datetime


class PolicyList(BaseModel):
    policies: list[PolicyView]
    count: int


class PolicyEnvelope(BaseModel):
    policy: PolicyView


class Evaluation(BaseModel):
    """The decision for one action, the policy that made it, and every policy that matched."""

    action: str
    decision: str
    policy: PolicyView | None
    considered: list[PolicyView]
    rule: str


class CascadedPolicy(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: uuid.UUID
    action_pattern: ActionPattern
    decision: Decision
    scope_tags: ScopeTags = Field(default_factory=list)
    description: str = Field(default="", max_length=1000)


class CascadeRequest(BaseModel):
    """`PUT federation_api/intervention_policies`: the parent's whole cascaded set, as of generated_at."""

    model_config = ConfigDict(extra="ignore")
    generated_at: datetime
    policies: list[CascadedPolicy] = Field(default_factory=list, max_length=500)


class CascadeResult(BaseModel):
    applied: int
    removed: int
    ignored: int
    stale: bool

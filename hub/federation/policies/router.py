"""Operator API: intervention policies (CRUD, with origin and overrides) and their evaluation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from hub.dependencies import OperatorT, RuntimeDep, SessionDep, require
from hub.federation.policies import service as policies_service
from hub.federation.policies.patterns import ACTION_RE
from hub.federation.policies.schemas import (
    Evaluation,
    PolicyCreate,
    PolicyEnvelope,
    PolicyList,
    PolicyUpdate,
    PolicyView,
)
from hub.operators import permissions
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/intervention_policies", tags=["intervention policies"])
Reader = Annotated[OperatorT, Depends(require(permissions.POLICIES_READ))]
Manager = Annotated[OperatorT, Depends(require(permissions.POLICIES_MANAGE))]


def _one(policy: object) -> dict:
    return envelope(PolicyEnvelope(policy=PolicyView.model_validate(policy)))


@router.get("", response_model=Envelope[PolicyList])
async def list_policies(
    session: SessionDep,
    operator: Reader,
    origin: Annotated[str | None, Query(pattern="^(local|cascaded)$")] = None,
) -> dict:
    """Every policy, local and cascaded from the parent, with `overridden` on shadowed defaults."""
    policies = [PolicyView.model_validate(p) for p in await policies_service.get_all(session, origin=origin)]
    return envelope(PolicyList(policies=policies, count=len(policies)))


@router.get("/evaluate", response_model=Envelope[Evaluation])
async def evaluate(
    session: SessionDep,
    runtime: RuntimeDep,
    operator: Reader,
    action: Annotated[str, Query(min_length=1, max_length=200, pattern=ACTION_RE)],
) -> dict:
    """The decision for an action: most specific pattern, then local over cascaded, then strictest."""
    member_node = not runtime.settings.primary_duties
    return envelope(await policies_service.evaluate(session, action=action, member_node=member_node))


@router.post("", status_code=201, response_model=Envelope[PolicyEnvelope])
async def create_policy(
    request: PolicyCreate, session: SessionDep, runtime: RuntimeDep, operator: Manager
) -> dict:
    """A local policy; one per action pattern (a local one overrides a cascaded default)."""
    return _one(
        await policies_service.create(session, runtime=runtime, request=request, actor=operator.actor)
    )


@router.get("/{policy_id}", response_model=Envelope[PolicyEnvelope])
async def show_policy(policy_id: str, session: SessionDep, operator: Reader) -> dict:
    """One policy."""
    return _one(await policies_service.get_or_raise(session, policy_id=policy_id))


@router.patch("/{policy_id}", response_model=Envelope[PolicyEnvelope])
async def update_policy(
    policy_id: str, request: PolicyUpdate, session: SessionDep, runtime: RuntimeDep, operator: Manager
) -> dict:
    """Change a local policy; a cascaded one is read-only (409)."""
    return _one(
        await policies_service.update_policy(
            session, runtime=runtime, policy_id=policy_id, request=request, actor=operator.actor
        )
    )


@router.delete("/{policy_id}", response_model=Envelope[PolicyEnvelope])
async def delete_policy(policy_id: str, session: SessionDep, runtime: RuntimeDep, operator: Manager) -> dict:
    """Delete a policy, local or cascaded (a cascaded one returns with the parent's next push)."""
    return _one(
        await policies_service.delete_policy(
            session, runtime=runtime, policy_id=policy_id, actor=operator.actor
        )
    )

"""Intervention policies: what to do when an action is attempted, and which ones cascade where.

Evaluation (`evaluate`), for overlapping patterns:
1. the most specific pattern wins: an exact action beats any wildcard, a longer prefix wildcard
   beats a shorter one (`system.federation.*` over `system.*`), and `*` comes last;
2. at equal specificity a local policy beats a cascaded one: that is how a child overrides a
   default from its parent (the cascaded one is then shown `overridden`);
3. still tied, the stricter decision wins: deny, then require_approval, then allow.
No matching policy: allow (no intervention).

Cascade, by the parent's spawn mode of the child (`cascades_to`):
- managed_child: the parent's own `system.*` policies, pushed by the parent under its grant
  (`policies.cascade`) after enrollment and on every change, as defaults the child can override;
  once the child emancipated, pushes stop and what was cascaded stays as defaults it may delete;
- cluster_member ("partial"): only `system.*` policies tagged `cluster`. A member's hub shares the
  parent's database, so nothing is pushed: a member node evaluates the shared table restricted
  to those policies;
- autonomous_peer: none.

On the child (`apply_cascade`) a push replaces the set cascaded from that parent, unless a newer
one was already applied (pushes carry the time they were generated). Cascaded policies cannot be
edited (create a local one with the same pattern to override); they can be deleted, and a push
from a parent that still manages the child brings them back.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import BigInteger, delete, func, select, text, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.exceptions import Conflict, NotFound, Unprocessable, ValidationFailed
from hub.federation.grants.remote import CALLABLE_STATUSES
from hub.federation.peers.models import FederationPeer
from hub.federation.policies import patterns
from hub.federation.policies.models import InterventionPolicy
from hub.federation.policies.schemas import (
    CascadeRequest,
    CascadeResult,
    Evaluation,
    PolicyCreate,
    PolicyUpdate,
    PolicyView,
)
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime

CLUSTER_TAG = "cluster"
DEFAULT_DECISION = "allow"
_STRICTNESS = {"deny": 2, "require_approval": 1, "allow": 0}
_WRITE_LOCK = 0x706F6C696379  # one writer at a time keeps "one local policy per pattern" true


def cascades_to(policy: InterventionPolicy, *, spawn_mode: str) -> bool:
    """Whether a parent's local policy is a default on its child of this spawn mode."""
    if policy.origin != "local" or not patterns.is_system(policy.action_pattern):
        return False
    if spawn_mode == "managed_child":
        return True
    if spawn_mode == "cluster_member":
        return CLUSTER_TAG in policy.scope_tags
    return False


def precedence(policy: InterventionPolicy) -> tuple[tuple[int, int], int, int]:
    """Sort key, highest first: specificity, then local over cascaded, then strictness."""
    return (
        patterns.specificity(policy.action_pattern),
        1 if policy.origin == "local" else 0,
        _STRICTNESS.get(policy.decision, 0),
    )


async def get_all(session: AsyncSession, *, origin: str | None = None) -> list[InterventionPolicy]:
    query = select(InterventionPolicy).order_by(
        InterventionPolicy.action_pattern, InterventionPolicy.origin.desc(), InterventionPolicy.created_at
    )
    if origin is not None:
        query = query.where(InterventionPolicy.origin == origin)
    return list((await session.scalars(query)).all())


async def get_or_raise(session: AsyncSession, *, policy_id: str) -> InterventionPolicy:
    try:
        policy = await session.get(InterventionPolicy, uuid.UUID(policy_id))
    except ValueError:
        policy = None
    if policy is None:
        raise NotFound(f"Intervention policy {policy_id} not found")
    return policy


async def _lock(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITE_LOCK})


async def _check_unique(session: AsyncSession, *, pattern: str, except_id: uuid.UUID | None = None) -> None:
    query = select(InterventionPolicy.id).where(
        InterventionPolicy.origin == "local", InterventionPolicy.action_pattern == pattern
    )
    if except_id is not None:
        query = query.where(InterventionPolicy.id != except_id)
    if await session.scalar(query) is not None:
        raise Conflict(f"A local policy for {pattern} already exists; edit it", code="POLICY_EXISTS")


async def _refresh_overridden(session: AsyncSession) -> None:
    """A cascaded policy is overridden while a local one has the same pattern."""
    local = aliased(InterventionPolicy)
    shadowed = (
        select(local.id)
        .where(local.origin == "local", local.action_pattern == InterventionPolicy.action_pattern)
        .exists()
    )
    await session.execute(
        update(InterventionPolicy)
        .where(InterventionPolicy.origin == "cascaded")
        .values(overridden=shadowed)
        .execution_options(synchronize_session=False)
    )


async def _push_to_children(session: AsyncSession, *touched: str) -> list[uuid.UUID]:
    """A change to our `system.*` policies goes to every managed child: requested with the change."""
    if not any(patterns.is_system(p) for p in touched):
        return []
    from hub.federation.policies import jobs as policies_jobs  # jobs → cascade → this module

    return await policies_jobs.request_cascade(session, peer_ids=await managed_children(session))


async def create(
    session: AsyncSession, *, runtime: HubRuntime, request: PolicyCreate, actor: str
) -> InterventionPolicy:
    await _lock(session)
    await _check_unique(session, pattern=request.action_pattern)
    policy = InterventionPolicy(
        action_pattern=request.action_pattern,
        decision=request.decision,
        origin="local",
        scope_tags=sorted(set(request.scope_tags)),
        description=request.description,
    )
    session.add(policy)
    await session.flush()
    await _refresh_overridden(session)
    await audit_service.record(
        session,
        actor=actor,
        action="intervention_policy.create",
        target=str(policy.id),
        details={"action_pattern": policy.action_pattern, "decision": policy.decision},
    )
    pushes = await _push_to_children(session, policy.action_pattern)
    await session.commit()
    await outbox_service.dispatch_now(runtime, pushes)
    return policy


async def update_policy(
    session: AsyncSession, *, runtime: HubRuntime, policy_id: str, request: PolicyUpdate, actor: str
) -> InterventionPolicy:
    """Change a local policy; cascaded policies are read-only."""
    await _lock(session)
    policy = await get_or_raise(session, policy_id=policy_id)
    if policy.origin != "local":
        raise Conflict(
            "A cascaded policy is the parent's default: create a local policy with the same "
            "action pattern to override it, or delete it",
            code="CASCADED_POLICY",
        )
    before = policy.action_pattern
    changes = request.model_dump(exclude_none=True)
    if "action_pattern" in changes:
        await _check_unique(session, pattern=changes["action_pattern"], except_id=policy.id)
    if "scope_tags" in changes:
        changes["scope_tags"] = sorted(set(changes["scope_tags"]))
    for key, value in changes.items():
        setattr(policy, key, value)
    policy.updated_at = utcnow()
    await session.flush()
    await _refresh_overridden(session)
    await audit_service.record(
        session, actor=actor, action="intervention_policy.update", target=str(policy.id), details=changes
    )
    pushes = await _push_to_children(session, before, policy.action_pattern)
    await session.commit()
    await outbox_service.dispatch_now(runtime, pushes)
    return policy


async def delete_policy(
    session: AsyncSession, *, runtime: HubRuntime, policy_id: str, actor: str
) -> InterventionPolicy:
    await _lock(session)
    policy = await get_or_raise(session, policy_id=policy_id)
    await session.execute(delete(InterventionPolicy).where(InterventionPolicy.id == policy.id))
    await _refresh_overridden(session)
    await audit_service.record(
        session,
        actor=actor,
        action="intervention_policy.delete",
        target=str(policy.id),
        details={"action_pattern": policy.action_pattern, "origin": policy.origin},
    )
    pushes = await _push_to_children(session, policy.action_pattern) if policy.origin == "local" else []
    await session.commit()
    await outbox_service.dispatch_now(runtime, pushes)
    return policy


async def evaluate(session: AsyncSession, *, action: str, member_node: bool = False) -> Evaluation:
    """The decision for `action` (see the module docstring for the order)."""
    if not patterns.is_pattern(action) or "*" in action:
        raise ValidationFailed("action must be dotted lowercase segments, e.g. system.spawn")
    candidates = [p for p in await get_all(session) if patterns.matches(p.action_pattern, action)]
    if member_node:
        candidates = [p for p in candidates if cascades_to(p, spawn_mode="cluster_member")]
    candidates.sort(key=precedence, reverse=True)
    views = [PolicyView.model_validate(p) for p in candidates]
    if not views:
        return Evaluation(
            action=action, decision=DEFAULT_DECISION, policy=None, considered=[], rule="no policy matches"
        )
    winner = candidates[0]
    return Evaluation(
        action=action,
        decision=winner.decision,
        policy=views[0],
        considered=views,
        rule=_rule(winner, candidates[1:]),
    )


def _rule(winner: InterventionPolicy, others: list[InterventionPolicy]) -> str:
    tied = [
        p
        for p in others
        if patterns.specificity(p.action_pattern) == patterns.specificity(winner.action_pattern)
    ]
    if not tied:
        return "most specific pattern"
    if winner.origin == "local" and any(p.origin != "local" for p in tied):
        return "local overrides cascaded"
    return "strictest decision among equals"


def pushes_to(peer: FederationPeer) -> bool:
    """Only a live managed child that has not emancipated gets pushes (see the module docstring)."""
    return (
        peer.spawn_role == "parent"
        and peer.spawn_mode == "managed_child"
        and peer.status in CALLABLE_STATUSES
        and peer.emancipated_at is None
    )


async def cascade_selection(session: AsyncSession, *, peer: FederationPeer) -> list[InterventionPolicy]:
    """The policies `peer` gets from us as defaults, by its mode; none once it emancipated."""
    if peer.spawn_role != "parent" or peer.emancipated_at is not None:
        return []
    return [p for p in await get_all(session, origin="local") if cascades_to(p, spawn_mode=peer.spawn_mode)]


async def managed_children(session: AsyncSession) -> list[uuid.UUID]:
    """The children a change to our `system.*` policies must be pushed to."""
    rows = await session.scalars(
        select(FederationPeer.id).where(
            FederationPeer.spawn_role == "parent",
            FederationPeer.spawn_mode == "managed_child",
            FederationPeer.status.in_(CALLABLE_STATUSES),
            FederationPeer.emancipated_at.is_(None),
        )
    )
    return list(rows.all())


# How far ahead of our clock a parent's push may be dated. Pushes are ordered by their date, so one
# dated far ahead would make every honest push after it look older and be ignored.
CASCADE_CLOCK_SKEW = timedelta(minutes=5)


def _check_date(request: CascadeRequest) -> None:
    generated_at = request.generated_at
    if generated_at.tzinfo is None:
        raise Unprocessable("generated_at must carry a UTC offset", code="INVALID_REQUEST")
    if generated_at > utcnow() + CASCADE_CLOCK_SKEW:
        raise Unprocessable(
            "generated_at is in the future beyond the allowed clock skew: push refused",
            code="CASCADE_FROM_THE_FUTURE",
        )


def _micros(request: CascadeRequest) -> int:
    return int(request.generated_at.timestamp() * 1_000_000)


def _merged(key: str, value: dict[str, Any]) -> Any:
    """metadata || {key: value}, in SQL, so concurrent writers of other keys are not overwritten."""
    return FederationPeer.metadata_.op("||", return_type=JSONB)(type_coerce({key: value}, JSONB))


async def merge_metadata(
    session: AsyncSession, *, peer_id: uuid.UUID, key: str, value: dict[str, Any]
) -> None:
    await session.execute(
        update(FederationPeer).where(FederationPeer.id == peer_id).values(metadata_=_merged(key, value))
    )


async def apply_cascade(
    session: AsyncSession, *, peer: FederationPeer, request: CascadeRequest
) -> CascadeResult:
    """Child side: replace what `peer` (our parent) cascaded with this set, if it is the newest."""
    _check_date(request)
    generated = _micros(request)
    last = func.coalesce(
        FederationPeer.metadata_["policy_cascade"]["generated_us"].astext.cast(BigInteger), 0
    )
    stamp = {
        "generated_at": request.generated_at.isoformat(),
        "generated_us": generated,
        "applied_at": utcnow().isoformat(),
    }
    newest = await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer.id, last < generated)
        .values(metadata_=_merged("policy_cascade", stamp))
        .returning(FederationPeer.id)
    )
    if newest is None:
        await session.rollback()
        return CascadeResult(applied=0, removed=0, ignored=len(request.policies), stale=True)
    await _lock(session)
    wanted = [p for p in request.policies if patterns.is_system(p.action_pattern)]
    existing = {
        p.origin_policy_id: p
        for p in await session.scalars(
            select(InterventionPolicy).where(
                InterventionPolicy.origin == "cascaded", InterventionPolicy.origin_peer_id == peer.id
            )
        )
    }
    now = utcnow()
    for incoming in wanted:
        row = existing.pop(incoming.id, None)
        if row is None:
            row = InterventionPolicy(origin="cascaded", origin_peer_id=peer.id, origin_policy_id=incoming.id)
            session.add(row)
        row.action_pattern = incoming.action_pattern
        row.decision = incoming.decision
        row.scope_tags = sorted(set(incoming.scope_tags))
        row.description = incoming.description
        row.updated_at = now
    for stale in existing.values():
        await session.delete(stale)
    await session.flush()
    await _refresh_overridden(session)
    await audit_service.record(
        session,
        actor=f"peer:{peer.id}",
        action="intervention_policy.cascade",
        target=str(peer.id),
        details={"applied": len(wanted), "removed": len(existing)},
    )
    await session.commit()
    return CascadeResult(
        applied=len(wanted), removed=len(existing), ignored=len(request.policies) - len(wanted), stale=False
    )

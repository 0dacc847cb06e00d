"""Grants: the editor, the check a child makes on its parent's calls, emancipation, retention.

A `held` grant is a right we hold on a peer: its bearer credential lives in the secret store
(`bearer_secret_ref`). A `granted` grant is a right a peer holds on us: we keep only the bearer's
hash. Once we granted a peer anything, every call it makes under that grant carries the bearer,
and a revoked, archived or unknown bearer gets 401 `GRANT_REVOKED`, an expired one `GRANT_EXPIRED`.

Retention: a revoked grant stays, shown as `revoked`, until `purge_after` (revoked_at +
`grant_retention_days`). `purge` then archives it: archived_at is set and the credential goes (the
held grant's secret is deleted, the granted grant's hash cleared); the row stays as a record. A
grant that expired without being revoked is archived once it has been expired that long. Archived
rows are deleted after one more retention period.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.exceptions import Conflict, NotFound, ValidationFailed
from hub.federation.findings import service as findings_service
from hub.federation.grants.exceptions import (
    GrantDenied,
    GrantExpired,
    GrantRequired,
    GrantRevoked,
    NoLiveGrant,
)
from hub.federation.grants.models import GRANT_STATES, MANAGED_CHILD_OPERATOR, FederationGrant
from hub.federation.peers.models import FederationPeer
from hub.federation.policies import patterns
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime
from hub.secrets import tokens
from hub.secrets.store import SecretStore

# What each call a peer makes under a grant needs: read for reads, write for changes, admin for
# the operator's own records.
ACTION_SCOPES: dict[str, str] = {
    "system.peer.read": "read",
    "system.intervention_policies.read": "read",
    "system.intervention_policies.write": "write",
    "system.audit.read": "admin",
}
PEER_GRANT_REVOKED = "peer_grant_revoked"
PEER_GRANT_EXPIRED = "peer_grant_expired"
MAX_PAGE = 500


def state_clause(state: str, now: datetime) -> ColumnElement[bool]:
    """SQL for FederationGrant.state(): the same timestamps, the same order of precedence."""
    live = and_(FederationGrant.archived_at.is_(None), FederationGrant.revoked_at.is_(None))
    clauses: dict[str, ColumnElement[bool]] = {
        "archived": FederationGrant.archived_at.is_not(None),
        "revoked": and_(FederationGrant.archived_at.is_(None), FederationGrant.revoked_at.is_not(None)),
        "expired": and_(live, FederationGrant.expires_at <= now),
        "active": and_(live, FederationGrant.expires_at > now),
    }
    if state not in clauses:
        raise ValidationFailed(f"Unknown state {state!r}; states: {', '.join(GRANT_STATES)}")
    return clauses[state]


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as e:
        raise ValidationFailed(f"{what} must be a UUID") from e


async def get_all(
    session: AsyncSession,
    *,
    resource_kind: str | None = None,
    peer_id: str | None = None,
    state: str | None = None,
    direction: str | None = None,
    limit: int = 100,
) -> list[FederationGrant]:
    """Newest first, filtered by kind, peer, state and direction."""
    query = select(FederationGrant).order_by(FederationGrant.created_at.desc()).limit(limit)
    if resource_kind:
        query = query.where(FederationGrant.resource_kind == resource_kind)
    if peer_id:
        query = query.where(FederationGrant.peer_id == _uuid(peer_id, "peer_id"))
    if state:
        query = query.where(state_clause(state, utcnow()))
    if direction:
        query = query.where(FederationGrant.direction == direction)
    return list((await session.scalars(query)).all())


async def get_or_raise(session: AsyncSession, *, grant_id: str) -> FederationGrant:
    try:
        grant = await session.get(FederationGrant, uuid.UUID(grant_id))
    except ValueError:
        grant = None
    if grant is None:
        raise NotFound(f"Grant {grant_id} not found")
    return grant


async def revoke(
    session: AsyncSession,
    *,
    runtime: HubRuntime,
    grant_id: str,
    reason: str | None,
    actor: str,
) -> FederationGrant:
    """Revoke one grant (409 if it is not live); a held grant's bearer secret is deleted at once.

    On a child, revoking the parent's `granted` operator grant is emancipation: the parent's next
    call gets 401. On the parent, revoking its `held` one is mutual emancipation: it stops calling,
    and the child is told (through the outbox, retried until it heard) so it refuses the bearer.
    """
    grant = await get_or_raise(session, grant_id=grant_id)
    now = utcnow()
    retention = timedelta(days=runtime.settings.federation.grant_retention_days)
    revoked = await session.scalar(
        update(FederationGrant)
        .where(
            FederationGrant.id == grant.id,
            FederationGrant.revoked_at.is_(None),
            FederationGrant.archived_at.is_(None),
        )
        .values(revoked_at=now, revoke_reason=reason, purge_after=now + retention)
        .returning(FederationGrant)
        .execution_options(populate_existing=True)
    )
    if revoked is None:
        raise Conflict(f"Grant {grant.id} is already {grant.state()}", code="ALREADY_REVOKED")
    notices = []
    if revoked.direction == "held" and revoked.resource_kind == MANAGED_CHILD_OPERATOR:
        await _mark_emancipated(session, peer_id=revoked.peer_id, now=now)
        await findings_service.resolve(session, kind=PEER_GRANT_REVOKED, subjects=[str(revoked.peer_id)])
    if revoked.direction == "held":
        notices.append(await request_revoke_notice(session, grant=revoked))
    await audit_service.record(
        session,
        actor=actor,
        action="grant.revoke",
        target=str(revoked.id),
        details={
            "peer_id": str(revoked.peer_id),
            "direction": revoked.direction,
            "resource_kind": revoked.resource_kind,
            "reason": reason,
        },
    )
    await session.commit()
    await outbox_service.dispatch_now(runtime, notices)
    await forget_bearers(session, secrets=runtime.secrets, peer_id=revoked.peer_id)
    await session.commit()
    return revoked


REVOKE_NOTICE_JOB = "federation_grant_revoke_notice"
REVOKE_UNDELIVERED = "grant_revoke_undelivered"


async def request_revoke_notice(session: AsyncSession, *, grant: FederationGrant) -> uuid.UUID:
    """Tell the peer we gave up a grant we held, in the revoke's transaction (hub.outbox)."""
    return await outbox_service.add(
        session,
        job=REVOKE_NOTICE_JOB,
        kwargs={"grant_id": str(grant.id), "peer_id": str(grant.peer_id)},
        key=f"{REVOKE_NOTICE_JOB}:{grant.id}",
    )


async def revoked_by_peer(
    session: AsyncSession, *, peer: FederationPeer, grant_id: str, reason: str | None, retention_days: int
) -> FederationGrant:
    """The peer gave up a grant we gave it: its bearer is refused from now on (idempotent)."""
    grant = await session.scalar(
        select(FederationGrant).where(
            FederationGrant.id == _uuid(grant_id, "grant_id"),
            FederationGrant.peer_id == peer.id,
            FederationGrant.direction == "granted",
        )
    )
    if grant is None:
        raise NotFound(f"Grant {grant_id} not found")
    now = utcnow()
    revoked = await session.scalar(
        update(FederationGrant)
        .where(FederationGrant.id == grant.id, FederationGrant.revoked_at.is_(None))
        .values(
            revoked_at=now,
            revoke_reason=f"given up by the peer: {reason}" if reason else "given up by the peer",
            purge_after=now + timedelta(days=retention_days),
        )
        .returning(FederationGrant.id)
    )
    if revoked is not None:
        await audit_service.record(
            session,
            actor=f"peer:{peer.id}",
            action="grant.revoked_by_peer",
            target=str(grant.id),
            details={"peer_id": str(peer.id), "reason": reason},
        )
    await session.commit()
    await session.refresh(grant)
    return grant


async def record_notice(
    session: AsyncSession, *, peer: FederationPeer, grant_id: str, delivered: bool, problem: str = ""
) -> None:
    """While the peer has not heard that we gave up its grant, a finding says so."""
    if delivered:
        await findings_service.resolve(session, kind=REVOKE_UNDELIVERED, subjects=[grant_id])
        return
    await findings_service.open_finding(
        session,
        kind=REVOKE_UNDELIVERED,
        subject=grant_id,
        peer_id=peer.id,
        severity="error",
        message=(
            f"{peer.name} has not yet been told that grant {grant_id} was revoked ({problem}); it is "
            "retried until the child answers. Until then the child still accepts that bearer: we no "
            "longer hold it, but revoke the peering if the bearer may have leaked"
        ),
        details={"grant_id": grant_id, "problem": problem},
    )


async def forget_bearers(
    session: AsyncSession, *, secrets: SecretStore, peer_id: uuid.UUID | None = None
) -> int:
    """Delete the bearer secrets of held grants that are no longer live; the caller commits.

    The reference is cleared only after its secret is gone, so a failed delete is retried by the
    next revoke or purge instead of leaving a secret no row points at.
    """
    query = select(FederationGrant.id, FederationGrant.bearer_secret_ref).where(
        FederationGrant.direction == "held",
        FederationGrant.bearer_secret_ref.is_not(None),
        or_(FederationGrant.revoked_at.is_not(None), FederationGrant.archived_at.is_not(None)),
    )
    if peer_id is not None:
        query = query.where(FederationGrant.peer_id == peer_id)
    forgotten = []
    for grant_id, ref in (await session.execute(query)).all():
        await secrets.delete(str(ref))
        forgotten.append(grant_id)
    if forgotten:
        await session.execute(
            update(FederationGrant).where(FederationGrant.id.in_(forgotten)).values(bearer_secret_ref=None)
        )
    return len(forgotten)


def _check_allowlists(grant: FederationGrant, action: str) -> None:
    """Pessimistic scope: a non-empty allowlist must name the action; one we cannot read denies."""
    for kind, entries in (grant.allowlists or {}).items():
        if not entries:
            continue
        if kind != "actions" or not isinstance(entries, list):
            raise GrantDenied(f"The grant's {kind!r} allowlist is not one this hub can check")
        if not any(isinstance(p, str) and patterns.matches(p, action) for p in entries):
            raise GrantDenied(f"The grant's actions allowlist does not include {action}")


async def authorize(
    session: AsyncSession,
    *,
    peer: FederationPeer,
    bearer: str | None,
    action: str,
    required: bool = False,
    now: datetime | None = None,
) -> FederationGrant | None:
    """The live grant under which `peer` may do `action` here; None when we never granted it any
    and the action does not need one (`required`: 403 then).

    401 without the bearer, for a bearer that matches no live grant (revoked, archived, never
    recorded here: a parent cannot grant itself rights), or an expired grant; 403 when the
    grant's scopes or allowlists do not cover the action.
    """
    now = now or utcnow()
    granted = (
        await session.scalars(
            select(FederationGrant).where(
                FederationGrant.peer_id == peer.id, FederationGrant.direction == "granted"
            )
        )
    ).all()
    if not granted:
        if required:
            raise GrantDenied(f"No grant lets this peer do {action} here")
        return None
    if not bearer:
        raise GrantRequired("This call needs the grant's bearer credential (Authorization: Bearer …)")
    digest = tokens.hash_secret(bearer)
    grant = next((g for g in granted if g.bearer_hash and hmac.compare_digest(g.bearer_hash, digest)), None)
    state = grant.state(now) if grant is not None else "revoked"
    if grant is None or state in ("revoked", "archived"):
        raise GrantRevoked("The bearer credential no longer matches a live grant")
    if state == "expired":
        raise GrantExpired(f"The grant expired at {grant.expires_at.isoformat()}")
    scope = ACTION_SCOPES[action]
    if scope not in grant.permission_scopes:
        raise GrantDenied(f"The grant's scopes {grant.permission_scopes} lack {scope!r}, needed for {action}")
    _check_allowlists(grant, action)
    return grant


@dataclass(frozen=True)
class HeldCredential:
    grant_id: uuid.UUID
    bearer: str = field(repr=False)


async def held_credential(
    session: AsyncSession, *, secrets: SecretStore, peer_id: uuid.UUID, now: datetime | None = None
) -> HeldCredential | None:
    """The bearer we call `peer_id` with; None if we never held a grant on it (certificate only).

    Once we held one and none is live any more (we revoked it, or it expired), we stop calling.
    """
    now = now or utcnow()
    held = (
        await session.scalars(
            select(FederationGrant)
            .where(FederationGrant.peer_id == peer_id, FederationGrant.direction == "held")
            .order_by(FederationGrant.created_at.desc())
        )
    ).all()
    if not held:
        return None
    live = next((g for g in held if g.state(now) == "active" and g.bearer_secret_ref), None)
    stored = await secrets.get(live.bearer_secret_ref or "") if live is not None else None
    if live is None or not stored or not stored.get("bearer"):
        raise NoLiveGrant(f"This hub holds no live grant on peer {peer_id}; calls under it have stopped")
    return HeldCredential(grant_id=live.id, bearer=stored["bearer"])


async def _mark_emancipated(session: AsyncSession, *, peer_id: uuid.UUID, now: datetime) -> bool:
    marked = await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer_id, FederationPeer.emancipated_at.is_(None))
        .values(emancipated_at=now, updated_at=now)
        .returning(FederationPeer.id)
    )
    return marked is not None


async def record_refusal(session: AsyncSession, *, peer: FederationPeer, code: str, message: str) -> None:
    """The child answered 401 to a call under our grant: emancipation, or an expired grant."""
    if code == GrantRevoked.code:
        if await _mark_emancipated(session, peer_id=peer.id, now=utcnow()):
            await audit_service.record(
                session, actor=f"peer:{peer.id}", action="peer.emancipated", target=str(peer.id)
            )
        await findings_service.open_finding(
            session,
            kind=PEER_GRANT_REVOKED,
            subject=str(peer.id),
            peer_id=peer.id,
            message=f"{peer.name} revoked our managed_child_operator grant: it is now an autonomous peer",
            details={"code": code, "child_said": message},
        )
    elif code == GrantExpired.code:
        await findings_service.open_finding(
            session,
            kind=PEER_GRANT_EXPIRED,
            subject=str(peer.id),
            peer_id=peer.id,
            message=f"{peer.name} refuses our grant as expired",
            details={"code": code, "child_said": message},
        )


async def record_success(session: AsyncSession, *, peer: FederationPeer) -> None:
    await findings_service.resolve(session, kind=PEER_GRANT_EXPIRED, subjects=[str(peer.id)])


async def purge(
    session: AsyncSession, *, secrets: SecretStore, retention_days: int, now: datetime
) -> dict[str, int]:
    """Archive grants past retention (credentials dropped), delete those archived long ago."""
    retention = timedelta(days=retention_days)
    due = or_(
        FederationGrant.purge_after <= now,
        and_(FederationGrant.revoked_at.is_(None), FederationGrant.expires_at <= now - retention),
    )
    archived = (
        await session.scalars(
            update(FederationGrant)
            .where(FederationGrant.archived_at.is_(None), due)
            .values(archived_at=now, bearer_hash=None)
            .returning(FederationGrant.id)
        )
    ).all()
    forgotten = await forget_bearers(session, secrets=secrets)
    deleted = (
        await session.scalars(
            delete(FederationGrant)
            .where(FederationGrant.archived_at <= now - retention)
            .returning(FederationGrant.id)
        )
    ).all()
    return {"archived": len(archived), "secrets_deleted": forgotten, "deleted": len(deleted)}

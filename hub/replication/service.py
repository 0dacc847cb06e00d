"""cluster_member replication on the primary this hub runs on: slot, role, credential, delivery.

The secret store is the truth for the password: every run sets the role to what the store holds
(making a new one only when there is none or it expired), so a run killed anywhere is finished by
the next, and concurrent runs (serialised by an advisory lock per peer) agree on one password.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.database import session_scope, utcnow
from hub.exceptions import HubError
from hub.federation.findings import service as findings_service
from hub.federation.peers.models import FederationPeer
from hub.replication import delivery, janitor, metadata, primary, redis_acl
from hub.replication.credentials import Credential, ReplicaNames
from hub.replication.exceptions import CredentialNotReady, SetupFailed
from hub.replication.primary import PrimaryEndpoint, step
from hub.runtime import HubRuntime, queue_name
from shared_contract.accept import ClusterPgBlock

log = logging.getLogger(__name__)

SETUP_FAILED = "cluster_pg_setup_failed"
SETUP_STATUSES = ("proposed", "accepted", "enrolled", "active", "degraded", "suspended")
_ERROR_KEYS = ("reason", "failed_at")
_STALE_WHEN_READY = (*_ERROR_KEYS, "torn_down_at")
_DELIVERY_KEYS = delivery.DELIVERY_KEYS


class PgReplicaSetupService:
    """Setup, password rotation and teardown of one cluster_member's slot, role and credential."""

    def __init__(self, runtime: HubRuntime) -> None:
        self.runtime = runtime
        self.endpoint = PrimaryEndpoint.of(runtime.settings)

    def __repr__(self) -> str:
        return f"PgReplicaSetupService(primary='{self.endpoint.host}:{self.endpoint.port}')"

    async def setup(self, *, peer_id: uuid.UUID) -> dict[str, Any] | None:
        """Slot, role, secret, a replication login, then `ready`; None if the peer wants no replica."""
        names = ReplicaNames.of(peer_id)
        with step("preparing the replication slot and role"):
            async with session_scope(self.runtime.sessionmaker) as session:
                await primary.lock(session, peer_id=peer_id)
                if not await _wants_replica(session, peer_id=peer_id):
                    return None
                credential, fresh = await self._credential(names)
                with step(f"creating replication slot {names.slot}"):
                    await primary.ensure_slot(session, name=names.slot)
                with step(f"creating role {names.role}"):
                    await primary.ensure_role(session, credential=credential)
                with step(f"creating Redis user {names.role}"):
                    await self._ensure_redis_user(credential)
        with step(f"logging in for replication as {names.role}"):
            await primary.check_replication_login(self.endpoint, credential)
        with step("recording the ready state"):
            async with session_scope(self.runtime.sessionmaker) as session:
                block = await metadata.update_block(
                    session,
                    peer_id=peer_id,
                    set_=self._ready_block(names, credential),
                    unset=_STALE_WHEN_READY + (_DELIVERY_KEYS if fresh else ()),
                    where=(metadata.NOT_REVOKED,),
                )
                if block is not None:
                    await findings_service.resolve(session, kind=SETUP_FAILED, subjects=[str(peer_id)])
        return block

    async def _credential(self, names: ReplicaNames) -> tuple[Credential, bool]:
        """The stored credential, or a new one stored first; True when it is new."""
        with step(f"storing the credential at {names.secret_path}"):
            stored = Credential.from_secret(await self.runtime.secrets.get(names.secret_path))
            if stored is not None and not stored.expired():
                return stored, False
            return await self._new_credential(names), True

    async def _new_credential(self, names: ReplicaNames) -> Credential:
        """A new password, in the store before the role has it: the store is what re-runs trust."""
        credential = Credential.new(
            username=names.role, ttl_days=self.runtime.settings.replication.password_ttl_days
        )
        await self.runtime.secrets.put(names.secret_path, credential.to_secret())
        return credential

    async def _ensure_redis_user(self, credential: Credential) -> None:
        """The member's ACL user on our Redis: the platform queue, its database, this password."""
        await redis_acl.ensure_user(
            self.runtime.redis,
            username=credential.username,
            password=credential.redis_password,
            queue=queue_name(),
            database=redis_acl.database_of(self.runtime.settings.redis_url()),
        )

    def _ready_block(self, names: ReplicaNames, credential: Credential) -> dict[str, Any]:
        return {
            "state": "ready",
            "slot_name": names.slot,
            "primary_host": self.endpoint.advertised_host,
            "primary_port": self.endpoint.advertised_port,
            "credential_id": str(names.peer_id),
            "username": names.role,
            "database": self.endpoint.database,
            "prepared_at": utcnow().isoformat(),
            "expires_at": credential.expires_at.isoformat(),
        }

    async def record_failure(self, *, peer_id: uuid.UUID, failure: SetupFailed, retrying: bool) -> None:
        """`state: error` with the reason, and an open `cluster_pg_setup_failed` finding."""
        with step("recording the failure"):
            async with session_scope(self.runtime.sessionmaker) as session:
                block = await metadata.update_block(
                    session,
                    peer_id=peer_id,
                    set_={"state": "error", "reason": failure.reason, "failed_at": utcnow().isoformat()},
                    where=(metadata.NOT_REVOKED,),
                )
                if block is None:
                    return
                await findings_service.open_finding(
                    session,
                    kind=SETUP_FAILED,
                    subject=str(peer_id),
                    peer_id=peer_id,
                    severity="error",
                    message=f"Replication setup failed{' (retrying)' if retrying else ''}: {failure.reason}",
                    details={"reason": failure.reason, "retrying": retrying},
                )

    async def rotate_credential(self, *, peer_id: uuid.UUID) -> dict[str, Any] | None:
        """A new password on the role and in the store, deliverable once more; None unless ready."""
        names = ReplicaNames.of(peer_id)
        ready = (metadata.NOT_REVOKED, metadata.field("state") == "ready")
        with step("rotating the replication password"):
            async with session_scope(self.runtime.sessionmaker) as session:
                await primary.lock(session, peer_id=peer_id)
                query = select(FederationPeer.id).where(FederationPeer.id == peer_id, *ready)
                if await session.scalar(query) is None:
                    return None
                credential = await self._new_credential(names)
                await primary.ensure_role(session, credential=credential)
                with step(f"setting the Redis user {names.role}'s new password"):
                    await self._ensure_redis_user(credential)
                return await metadata.update_block(
                    session,
                    peer_id=peer_id,
                    set_={
                        "expires_at": credential.expires_at.isoformat(),
                        "rotated_at": utcnow().isoformat(),
                    },
                    unset=_DELIVERY_KEYS,
                    where=ready,
                )

    async def teardown(self, *, peer_id: uuid.UUID, expired: bool = False) -> dict[str, Any] | None:
        """Drop slot and role, delete the secret: revoked, or `expired` unaccepted. Else None."""
        names = ReplicaNames.of(peer_id)
        with step(f"dropping slot {names.slot} and role {names.role}"):
            async with session_scope(self.runtime.sessionmaker) as session:
                await primary.lock(session, peer_id=peer_id)
                if not await _may_tear_down(session, peer_id=peer_id, expired=expired):
                    return None
                await primary.drop(session, names=names)
                with step(f"deleting Redis user {names.role}"):
                    await redis_acl.delete_user(self.runtime.redis, username=names.role)
                block = await metadata.update_block(
                    session,
                    peer_id=peer_id,
                    set_={"state": "expired" if expired else "revoked", "torn_down_at": utcnow().isoformat()},
                    unset=(*_ERROR_KEYS, janitor.INACTIVE_SINCE),
                )
                await findings_service.resolve(session, kind=SETUP_FAILED, subjects=[str(peer_id)])
                await findings_service.resolve(session, kind=janitor.SLOT_INACTIVE, subjects=[names.slot])
        with step(f"deleting the credential at {names.secret_path}"):
            await self.runtime.secrets.delete(names.secret_path)
        return block


async def _wants_replica(session: AsyncSession, *, peer_id: uuid.UUID) -> bool:
    """A cluster_member we spawned that is not revoked and can still be (or has been) accepted."""
    found = await session.scalar(
        select(FederationPeer.id).where(
            FederationPeer.id == peer_id,
            FederationPeer.spawn_role == "parent",
            FederationPeer.spawn_mode == "cluster_member",
            FederationPeer.status.in_(SETUP_STATUSES),
            ~janitor.token_expired_unaccepted(),
        )
    )
    return found is not None


async def _may_tear_down(session: AsyncSession, *, peer_id: uuid.UUID, expired: bool) -> bool:
    """Checked under the lock: the peer may have been accepted or given a new token meanwhile."""
    row = (
        await session.execute(
            select(
                FederationPeer.spawn_mode, FederationPeer.status, janitor.token_expired_unaccepted()
            ).where(FederationPeer.id == peer_id)
        )
    ).first()
    if row is None:
        return True  # the peer row is gone: nothing left that the slot could serve
    spawn_mode, status, unaccepted = row
    if spawn_mode != "cluster_member":
        return False
    return bool(unaccepted) if expired else status == "revoked"


async def accept_additions(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer, key_bound: bool
) -> dict[str, Any]:
    """The accept response's cluster_member part: the credential (with the member's own Redis URL)
    if it can go now, else the block without secrets. Our own Redis URL is never in it.

    Only a key-bound accept (a CSR, so the answer is tied to the key that will fetch later) carries
    secrets: whoever replays a bare token gets neither password.
    """
    additions: dict[str, Any] = {}
    try:
        if not key_bound:
            raise CredentialNotReady("a token-only accept carries no credential", code="KEY_NOT_BOUND")
        delivered = await delivery.deliver(session, runtime=runtime, peer=peer, via=delivery.VIA_ACCEPT)
        additions["cluster_pg"] = delivered.model_dump()
    except HubError as e:
        # Not ready, fetched already, the store down: the accept still succeeds; the member fetches later.
        log.info("accept of %s carries no replication credential (%s)", peer.id, e.code)
        block = (peer.metadata_ or {}).get("cluster_pg") or {}
        if block.get("state") == "ready":
            additions["cluster_pg"] = ClusterPgBlock.model_validate(block).without_password().model_dump()
    return additions

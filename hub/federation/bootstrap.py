"""The child side: ingest the agent's first-run result once, then enroll and heartbeat the parent."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from hub.audit import service as audit_service
from hub.database import utcnow
from hub.federation import member, renewal
from hub.federation.grants.client import CA_CAPABILITY, FEDERATION_SCOPE
from hub.federation.grants.models import FederationGrant
from hub.federation.peering.client import PeerCallFailed, PeerClient, PeerCredentials
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime
from hub.secrets import tokens
from hub.supervision import announce
from shared_contract.accept import Endpoint
from shared_contract.enroll import EnrollRequest
from shared_contract.first_run import FirstRunResult
from shared_contract.heartbeat import HeartbeatRequest
from shared_contract.version import PLATFORM_VERSION

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("6f1d7c1e-6a49-4c55-9a55-2f0f0b5d1e11")
_ANNOUNCED = "enroll_announced"


def first_run_result_path(runtime: HubRuntime) -> Path:
    return member.result_path(runtime.settings)


def parent_row_id(result: FirstRunResult) -> uuid.UUID:
    """Deterministic, so a second ingest finds the first one's row; never the parent's own id."""
    return uuid.uuid5(_NAMESPACE, f"parent-of:{result.peer_id}")


async def ingest_first_run(runtime: HubRuntime) -> uuid.UUID | None:
    """Reciprocal peer row and (managed_child) the granted grant, in one transaction, once."""
    path = first_run_result_path(runtime)
    if not path.exists():
        return None
    result = FirstRunResult.read(path)
    row_id = parent_row_id(result)
    async with runtime.sessionmaker() as session, session.begin():
        inserted = await session.scalar(
            insert(FederationPeer)
            .values(
                id=row_id,
                name=f"parent {result.parent_url}",
                spawn_role="child",
                spawn_mode=result.spawn_mode,
                status="accepted",
                # Where we call the parent with our certificate: the federation URL its accept
                # answer named, else the parent_url we were spawned with.
                remote_url=result.federation_url or result.parent_url,
                remote_platform_id=result.parent_peer_id,
                contract_version=result.contract_version_agreed,
                client_cert_fingerprint=result.client_cert_fingerprint,
                accepted_at=datetime.fromisoformat(result.accepted_at),
                metadata=_row_metadata(result),
            )
            .on_conflict_do_nothing()
            .returning(FederationPeer.id)
        )
        if inserted is not None and result.grant is not None and result.grant.bearer_token:
            await _granted_grant(session, row_id=row_id, result=result)
        if inserted is not None:
            await audit_service.record(
                session,
                actor="first-run",
                action="peer.bootstrap",
                target=str(row_id),
                details={"spawn_mode": result.spawn_mode},
            )
    if result.grant is not None and result.grant.bearer_token:
        scrubbed = result.model_copy(update={"grant": result.grant.model_copy(update={"bearer_token": None})})
        scrubbed.write(path)
    return row_id


def _row_metadata(result: FirstRunResult) -> dict[str, Any]:
    identity = {
        "client_cert_path": result.client_cert_path,
        "client_key_path": result.client_key_path,
        "ca_chain_path": result.ca_chain_path,
        "parent_peer_id": result.peer_id,
    }
    metadata: dict[str, Any] = {"identity": identity, "instance_uuid": result.instance_uuid}
    if result.cluster_pg is not None:
        metadata["cluster_pg"] = result.cluster_pg.model_dump(mode="json", exclude_none=True)
    return metadata


async def _granted_grant(session: Any, *, row_id: uuid.UUID, result: FirstRunResult) -> None:
    """The symmetric child-side grant: what the parent may do here; only the bearer's hash is kept."""
    grant = result.grant
    assert grant is not None and grant.bearer_token is not None
    await session.execute(
        insert(FederationGrant)
        .values(
            id=uuid.UUID(grant.id) if _is_uuid(grant.id) else uuid.uuid4(),
            peer_id=row_id,
            direction="granted",
            resource_kind=grant.resource_kind,
            remote_subject=grant.remote_subject,
            permission_scopes=grant.permission_scopes,
            allowlists={},
            bearer_hash=tokens.hash_secret(grant.bearer_token),
            expires_at=datetime.fromisoformat(grant.expires_at)
            if grant.expires_at
            else utcnow() + timedelta(days=365),
            metadata={"mirrors_parent_grant": grant.id, "auto_issued_by": "first_run_bootstrap"},
        )
        .on_conflict_do_nothing()
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def parent_credentials(peer: FederationPeer) -> PeerCredentials | None:
    """How we call our parent: its URL, our client certificate and key, its CA (from first run)."""
    identity = (peer.metadata_ or {}).get("identity") or {}
    paths = [identity.get(k) for k in ("client_cert_path", "client_key_path", "ca_chain_path")]
    if not peer.remote_url or not all(paths):
        return None
    cert, key, ca = (Path(str(p)) for p in paths)
    return PeerCredentials(peer.remote_url, cert, key, ca)


async def sync_with_parent(runtime: HubRuntime) -> str | None:
    """One tick of this node's duty: enroll if not yet, then heartbeat; returns the parent's answer.

    The duty comes from this node's own first-run result, never from rows in the database: a
    cluster_member shares its parent's database, and the parent must not heartbeat on its behalf.
    """
    path = first_run_result_path(runtime)
    if not path.exists():
        return None
    row_id = parent_row_id(FirstRunResult.read(path))
    async with runtime.sessionmaker() as session:
        parent = await session.get(FederationPeer, row_id)
    if parent is None or parent.status not in ("accepted", "enrolled", "active", "degraded"):
        return None
    credentials = parent_credentials(parent)
    if credentials is None:
        return None
    credentials = await renewal.renew_if_due(runtime, parent, credentials)
    announcement = await _enroll_request(runtime, parent)
    try:
        async with PeerClient(credentials) as client:
            # Enroll once, and again whenever this process has something new to say (its
            # federation URL is known only once `serve` listens; a restart may change ports).
            if parent.status == "accepted" or runtime.extras.get(_ANNOUNCED) != announcement:
                await client.call("POST", "/enroll", announcement)
                runtime.extras[_ANNOUNCED] = announcement
            if parent.status == "accepted":
                await _set_status(runtime, parent.id, "enrolled", enrolled_at=utcnow())
            beat = HeartbeatRequest(platform_version=PLATFORM_VERSION)
            data = await client.call("POST", "/heartbeat", beat)
    except PeerCallFailed as e:
        log.warning("parent %s did not take our call: %s %s", parent.remote_url, e.status or "", e.message)
        return None
    if parent.status != "active":
        await _set_status(runtime, parent.id, "active", activated_at=utcnow())
    await _set_status(runtime, parent.id, None, last_heartbeat_at=utcnow())
    return str(data.get("status"))


async def _enroll_request(runtime: HubRuntime, parent: FederationPeer) -> EnrollRequest:
    """Who we are and how the parent reaches our federation API (URL and the CA to verify it by)."""
    federation_url = _federation_url(runtime)
    async with runtime.sessionmaker() as session:
        granted = await session.scalar(
            select(FederationGrant.id).where(
                FederationGrant.peer_id == parent.id,
                FederationGrant.direction == "granted",
                FederationGrant.revoked_at.is_(None),
            )
        )
    return EnrollRequest(
        platform_id=str((parent.metadata_ or {}).get("instance_uuid") or parent.id),
        platform_url=runtime.settings.public_url or "",
        name=runtime.settings.platform_name,
        endpoints=[Endpoint(url=federation_url, scope=FEDERATION_SCOPE)] if federation_url else [],
        capabilities={CA_CAPABILITY: runtime.ca.chain_pem},
        granted_grant_id=str(granted) if granted else None,
    )


def _federation_url(runtime: HubRuntime) -> str | None:
    """The HTTPS listener `serve` announced in serve.json (None under a bare `worker`, or too early)."""
    return announce.federation_url(runtime.settings.data_dir)


async def _set_status(runtime: HubRuntime, peer_id: uuid.UUID, status: str | None, **values: Any) -> None:
    if status is not None:
        values["status"] = status
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(FederationPeer).where(FederationPeer.id == peer_id).values(updated_at=utcnow(), **values)
        )

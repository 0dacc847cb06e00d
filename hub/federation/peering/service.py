"""Enroll and "what am I to you": the calls a live peer makes with its client certificate.

A child knows its parent by the id the parent has for it: the parent calls with a certificate
from its own CA, CN `fed:<that id>` (`metadata.identity.parent_peer_id` of our `child` row), so
that row is found by it, and the certificate must be signed by the parent's CA we pinned.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from sqlalchemy import cast, literal, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from hub.audit import service as audit_service
from hub.audit.models import AuditEvent
from hub.database import utcnow
from hub.exceptions import Conflict, Forbidden, Unauthorized, Unprocessable
from hub.federation.findings.service import ENROLL_REFUSED
from hub.federation.grants import client
from hub.federation.peering.auth import PeerIdentity
from hub.federation.peers.models import FederationPeer
from hub.federation.policies import jobs as policies_jobs
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime
from hub.secrets import ca as ca_service
from shared_contract.enroll import EnrollRequest, EnrollResponseData
from shared_contract.renew import RenewRequest, RenewResponseData

LIVE_STATUSES = ("accepted", "enrolled", "active", "degraded")
NO_CERTIFICATE = "A valid peer client certificate is required"


def _issued_by(certificate_pem: str, ca_chain_path: str | None) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        cas = x509.load_pem_x509_certificates(Path(ca_chain_path or "").read_bytes())
    except (OSError, ValueError):
        return False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


async def _our_parent(
    session: AsyncSession, *, parent_peer_id: uuid.UUID, certificate_pem: str | None
) -> FederationPeer | None:
    """Our `child` row for the parent that calls as `fed:<parent_peer_id>`, if its CA signed it."""
    parent = await session.scalar(
        select(FederationPeer).where(
            FederationPeer.spawn_role == "child",
            FederationPeer.metadata_["identity"]["parent_peer_id"].astext == str(parent_peer_id),
        )
    )
    if parent is None:
        return None
    identity = (parent.metadata_ or {}).get("identity") or {}
    if certificate_pem is not None and not _issued_by(certificate_pem, identity.get("ca_chain_path")):
        return None
    return parent


async def authenticate(
    session: AsyncSession,
    *,
    identity: PeerIdentity,
    statuses: tuple[str, ...],
    certificate_pem: str | None = None,
) -> FederationPeer:
    """The live peer behind a certificate: unknown or replaced certificates get 401, and a
    revoked peering 401 `PEER_REVOKED` (so the other side can mirror it)."""
    peer: FederationPeer | None
    if identity.as_parent:
        # Only a `fed-parent:` certificate from the CA we pinned is our parent: the certificate
        # the parent issued *us* names the same id, and must never pass for it.
        peer = await _our_parent(session, parent_peer_id=identity.peer_id, certificate_pem=certificate_pem)
    else:
        peer = await session.get(FederationPeer, identity.peer_id)
        if peer is not None and peer.spawn_role == "child":
            peer = None  # our parent's row answers to its `fed-parent:` certificate only
        elif (
            peer is not None
            and identity.cert_fingerprint is not None
            and peer.client_cert_fingerprint != identity.cert_fingerprint
        ):
            peer = None
    if peer is None:
        raise Unauthorized(NO_CERTIFICATE)
    if peer.status == "revoked":
        raise Unauthorized("This peering was revoked", code="PEER_REVOKED")
    if peer.status not in statuses:
        raise Unauthorized(NO_CERTIFICATE)
    return peer


async def note_refused_enroll(session: AsyncSession, *, platform_id: str, cause: str) -> None:
    """Keep why the enroll of an accepted child was refused, on that child's row (found by the
    node instance or platform id its payload carried); the findings sweep reports it."""
    try:
        node_id: uuid.UUID | None = uuid.UUID(platform_id)
    except ValueError:
        node_id = None
    matches = FederationPeer.remote_platform_id == platform_id
    if node_id is not None:
        matches = or_(matches, FederationPeer.node_instance_id == node_id)
    note = {ENROLL_REFUSED: {"cause": cause, "at": utcnow().isoformat()}}
    await session.execute(
        update(FederationPeer)
        .where(FederationPeer.spawn_role == "parent", FederationPeer.status == "accepted", matches)
        .values(metadata_=FederationPeer.metadata_.op("||")(cast(literal(json.dumps(note)), JSONB)))
    )
    await session.commit()


async def enroll(
    session: AsyncSession, *, peer: FederationPeer, request: EnrollRequest, runtime: HubRuntime
) -> EnrollResponseData:
    """accepted → enrolled once the child finished its first run; later enrolls refresh where it
    is reached. A managed child then gets our cascaded policies."""
    _check_reach(peer, request)
    now = utcnow()
    reach: dict[str, Any] = {"updated_at": now}
    if request.platform_url:
        reach["remote_url"] = request.platform_url
    if request.platform_id:
        reach["remote_platform_id"] = request.platform_id
    if request.endpoints:
        reach["endpoints"] = [e.model_dump(exclude_none=True) for e in request.endpoints]
    if request.capabilities:
        reach["capabilities"] = request.capabilities
    moved = await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer.id, FederationPeer.status == "accepted")
        .values(status="enrolled", enrolled_at=now, **reach)
        .returning(FederationPeer.enrolled_at)
    )
    if moved is not None:
        await audit_service.record(
            session, actor=f"peer:{peer.id}", action="peer.enroll", target=str(peer.id)
        )
    else:
        await session.execute(update(FederationPeer).where(FederationPeer.id == peer.id).values(**reach))
    pushes = []
    if peer.spawn_role == "parent" and peer.spawn_mode == "managed_child":
        pushes = await policies_jobs.request_cascade(session, peer_ids=[peer.id])
    await session.commit()
    await outbox_service.dispatch_now(runtime, pushes)
    await session.refresh(peer)
    return EnrollResponseData(
        peer_id=str(peer.id), status=peer.status, enrolled_at=(peer.enrolled_at or now).isoformat()
    )


async def renew_certificate(
    session: AsyncSession,
    *,
    runtime: HubRuntime,
    peer: FederationPeer,
    request: RenewRequest,
    presented: str | None,
) -> RenewResponseData:
    """A new client certificate for a peer whose certificate we issued (422 for a weak key); the
    peer's fingerprint moves to it in the same statement that checks the old one is still current,
    so the certificate the call was made with stops working and two renewals cannot both win."""
    if peer.spawn_role != "parent":
        raise Forbidden("This hub did not issue the certificate you call with", code="NOT_OUR_CERTIFICATE")
    csr = ca_service.parse_csr(request.csr_pem)
    cert = runtime.ca.sign_peer_csr(csr, peer_id=peer.id, days=runtime.settings.federation.peer_cert_ttl_days)
    fingerprint = ca_service.cert_fingerprint(cert)
    current = [FederationPeer.client_cert_fingerprint == presented] if presented is not None else []
    moved = await session.scalar(
        update(FederationPeer)
        .where(FederationPeer.id == peer.id, FederationPeer.status.in_(LIVE_STATUSES), *current)
        .values(
            client_cert_fingerprint=fingerprint,
            client_cert_serial=format(cert.serial_number, "x"),
            signed_at=utcnow(),
            updated_at=utcnow(),
        )
        .returning(FederationPeer.id)
    )
    if moved is None:
        raise Unauthorized(NO_CERTIFICATE)
    await audit_service.record(
        session,
        actor=f"peer:{peer.id}",
        action="peer.certificate.renew",
        target=str(peer.id),
        details={
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
        },
    )
    await session.commit()
    return RenewResponseData(
        client_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_chain_pem=runtime.ca.chain_pem,
        client_cert_fingerprint=fingerprint,
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def _check_reach(peer: FederationPeer, request: EnrollRequest) -> None:
    """422 for a federation endpoint we would not call (not https) or a CA that is not one; 409 for
    a CA other than the one pinned at the first enroll that named one."""
    for endpoint in request.endpoints:
        if endpoint.scope != client.FEDERATION_SCOPE:
            continue
        if problem := client.check_endpoint_url(endpoint.url):
            raise Unprocessable(
                "the federation endpoint must be an https:// URL with a host (no userinfo, query, fragment)",
                code=problem,
            )
    if client.CA_CAPABILITY not in request.capabilities:
        return
    ca_pem = request.capabilities[client.CA_CAPABILITY]
    if problem := client.check_ca_pem(ca_pem):
        raise Unprocessable(f"{client.CA_CAPABILITY} must be PEM CA certificates", code=problem)
    pinned = (peer.capabilities or {}).get(client.CA_CAPABILITY)
    changed = isinstance(pinned, str) and pinned.strip() != str(ca_pem).strip()
    if peer.enrolled_at is not None and changed:
        raise Conflict(
            f"{client.CA_CAPABILITY} differs from the CA pinned at enroll (revoke, spawn again to change it)",
            code="PEER_CA_PINNED",
        )


async def recent_audit_events(session: AsyncSession, *, limit: int) -> list[dict[str, Any]]:
    """The newest audit events, for a parent reading them under an admin grant."""
    events = await session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "outcome": e.outcome,
            "details": e.details,
        }
        for e in events
    ]

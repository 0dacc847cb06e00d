"""Accept: a child redeems its single-use acceptance token (wire-compat), optionally binding a key."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError
from sqlalchemy import exists, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from hub.database import session_scope, utcnow
from hub.exceptions import Conflict, Unauthorized, Unprocessable
from hub.federation import endpoints
from hub.federation.accept import fast
from hub.federation.grants.models import MANAGED_CHILD_OPERATOR, FederationGrant
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.observability import metrics
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime
from hub.secrets import ca as ca_service
from hub.secrets import tokens
from shared_contract.accept import AcceptRequest, AcceptResponseData, GrantInfo
from shared_contract.version import UnsupportedContractVersion, negotiate

log = logging.getLogger(__name__)
NOT_RECOGNIZED = "acceptance_token not recognized or expired"


def bearer_secret_path(grant_id: uuid.UUID) -> str:
    return f"federation_grant_bearer/{grant_id}"


def parse_request(body: Any) -> tuple[AcceptRequest, int]:
    """422 for a blank token, a bad body or an unsupported version, as the original answers."""
    if not isinstance(body, dict):
        raise Unprocessable("request body must be a JSON object", code="INVALID_REQUEST")
    try:
        request = AcceptRequest.model_validate(body)
    except ValidationError as e:
        fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors()[:5])
        raise Unprocessable(f"invalid accept request ({fields})", code="INVALID_REQUEST") from None
    if not request.acceptance_token.strip():
        raise Unprocessable("acceptance_token is required", code="INVALID_REQUEST")
    try:
        agreed = negotiate(request.contract_version)
    except UnsupportedContractVersion as e:
        raise Unprocessable(str(e), code="UNSUPPORTED_CONTRACT_VERSION") from None
    return request, agreed


async def _live_token_peer(session: AsyncSession, *, public_id: str, secret_hash: str) -> uuid.UUID | None:
    """The peer of a token that could still be consumed (unused, not superseded, not expired)."""
    return await session.scalar(select(AcceptanceToken.peer_id).where(*_consumable(public_id, secret_hash)))


async def _retry_peer(
    session: AsyncSession, *, public_id: str, secret_hash: str, key_fp: str | None, window: timedelta
) -> FederationPeer:
    """A used token: the same key retrying after a lost response gets its answer again, until the
    token expires or `window` after its first use, whichever comes first (then the one 401)."""
    token = await session.scalar(
        select(AcceptanceToken).where(
            AcceptanceToken.public_id == public_id,
            AcceptanceToken.secret_hash == secret_hash,
            AcceptanceToken.consumed_at.is_not(None),
            AcceptanceToken.superseded_at.is_(None),
        )
    )
    if token is None or key_fp is None or token.consumed_by is None or token.consumed_at is None:
        raise Unauthorized(NOT_RECOGNIZED)
    now = utcnow()
    if now >= token.expires_at or now >= token.consumed_at + window:
        raise Unauthorized(NOT_RECOGNIZED)
    if token.consumed_by != key_fp:
        raise Conflict(
            "acceptance_token was already redeemed with a different key", code="TOKEN_KEY_MISMATCH"
        )
    peer = await session.get(FederationPeer, token.peer_id)
    if peer is None or peer.status in ("revoked", "suspended"):
        raise Unauthorized(NOT_RECOGNIZED)
    return peer


def _consumable(public_id: str, secret_hash: str) -> list[Any]:
    return [
        AcceptanceToken.public_id == public_id,
        AcceptanceToken.secret_hash == secret_hash,
        AcceptanceToken.consumed_at.is_(None),
        AcceptanceToken.superseded_at.is_(None),
        AcceptanceToken.expires_at > utcnow(),
    ]


_CONSUME_AND_ACCEPT = """
    WITH consumed AS (
        UPDATE acceptance_token SET consumed_at = now(), consumed_by = $3
        WHERE public_id = $1 AND secret_hash = $2 AND consumed_at IS NULL
          AND superseded_at IS NULL AND expires_at > now()
        RETURNING peer_id
    )
    UPDATE federation_peer AS p SET
        status = 'accepted', accepted_at = now(), updated_at = now(), contract_version = $4,
        endpoints = $5::jsonb, capabilities = $6::jsonb, extension_slugs = $9::jsonb,
        remote_platform_id = coalesce($7, p.remote_platform_id), remote_url = coalesce($8, p.remote_url)
    FROM consumed
    WHERE p.id = consumed.peer_id AND p.status = 'proposed'
    RETURNING p.id, p.name, p.peer_kind, p.spawn_role, p.spawn_mode, p.status, p.contract_version,
              p.accepted_at, p.metadata
"""


async def _fetchrow(session: AsyncSession, statement: str, *args: Any) -> Any:
    """The first row of a hand-written statement, as a mapping, in the session's transaction.

    Through SQLAlchemy's connection, not the asyncpg connection under it: the adapter sends BEGIN
    with its first statement, so a statement sent past it would run (and commit) on its own, and a
    rollback would not undo it."""
    result = await (await session.connection()).exec_driver_sql(statement, args)
    return result.mappings().first()


async def _consume_and_accept(
    session: AsyncSession,
    *,
    public_id: str,
    secret_hash: str,
    key_fp: str | None,
    request: AcceptRequest,
    agreed: int,
) -> FederationPeer | None:
    """The common case in one round trip: consume the token and move its peer to accepted.

    None when either did not happen; the caller then rolls back and tells which one it was. The
    peer comes back as a detached FederationPeer holding what accept needs.
    """
    child = request.child
    row = await _fetchrow(
        session,
        _CONSUME_AND_ACCEPT,
        public_id,
        secret_hash,
        key_fp,
        agreed,
        json.dumps([e.model_dump(exclude_none=True) for e in request.endpoints]),
        json.dumps(request.capabilities),
        child.platform_id if child else None,
        child.url if child else None,
        json.dumps(request.extension_slugs),
    )
    if row is None:
        return None
    metadata = row["metadata"]
    fields = dict(row) | {"metadata_": json.loads(metadata) if isinstance(metadata, str) else metadata}
    del fields["metadata"]
    return FederationPeer(**fields)


HELD_SCOPES = ("read", "write", "admin")


def _held_grant_info(grant_id: Any, peer_id: Any, expires_at: datetime, bearer: str | None) -> GrantInfo:
    """The accept answer's grant: the operator grant the parent holds on a managed_child."""
    return GrantInfo(
        id=str(grant_id),
        resource_kind=MANAGED_CHILD_OPERATOR,
        permission_scopes=list(HELD_SCOPES),
        remote_subject=f"parent-operator@{peer_id}",
        expires_at=expires_at.isoformat(),
        bearer_token=bearer,
    )


_INSERT_HELD_GRANT = """
    INSERT INTO federation_grant (id, peer_id, direction, resource_kind, remote_subject,
        permission_scopes, allowlists, bearer_secret_ref, metadata, created_at, expires_at)
    VALUES ($1, $2, 'held', 'managed_child_operator', $3, '["read", "write", "admin"]'::jsonb,
        '{}'::jsonb, $4, $5::jsonb, now(), now() + make_interval(days => $6))
    ON CONFLICT DO NOTHING
    RETURNING expires_at
"""


async def _held_grant(
    session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer, fresh: bool, with_bearer: bool = True
) -> GrantInfo | None:
    """managed_child: the parent's operator grant on the child, issued once, in this transaction.

    Never a second one: once the grant was revoked (mutual emancipation), a retried accept does
    not mint the parent a new bearer; and once the child confirmed it got the first answer (it
    enrolled), a retry says which grant it is without the bearer (`with_bearer`).
    """
    # A peer that was proposed a moment ago in this transaction cannot have one yet.
    grant = (
        None
        if fresh
        else await session.scalar(
            select(FederationGrant)
            .where(
                FederationGrant.peer_id == peer.id,
                FederationGrant.direction == "held",
                FederationGrant.resource_kind == MANAGED_CHILD_OPERATOR,
            )
            .order_by(FederationGrant.created_at.desc())
        )
    )
    bearer: str | None
    if grant is None:
        grant_id, bearer = await _prepared_bearer(runtime, _prepared_id(peer))
        row = await _fetchrow(
            session,
            _INSERT_HELD_GRANT,
            grant_id,
            peer.id,
            f"parent-operator@{peer.id}",
            bearer_secret_path(grant_id),
            json.dumps(
                {
                    "auto_issued_by": "managed_child_accept_cascade",
                    "spawn_mode": peer.spawn_mode,
                    "spawn_role": peer.spawn_role,
                }
            ),
            runtime.settings.federation.grant_ttl_days,
        )
        if row is None:
            raise Conflict("a live managed_child_operator grant already exists", code="GRANT_EXISTS")
        return _held_grant_info(grant_id, peer.id, row["expires_at"], bearer)
    if grant.state() != "active" or not grant.bearer_secret_ref:
        return None
    if with_bearer:
        stored = await runtime.secrets.get(grant.bearer_secret_ref)
        bearer = stored["bearer"] if stored else None
    else:
        bearer = None
    return GrantInfo(
        id=str(grant.id),
        resource_kind=grant.resource_kind,
        permission_scopes=grant.permission_scopes,
        remote_subject=grant.remote_subject,
        expires_at=grant.expires_at.isoformat(),
        bearer_token=bearer,
    )


FORGET_UNCLAIMED_JOB = "federation_grant_forget_unclaimed_bearer"


def _unclaimed_key(grant_id: str | uuid.UUID) -> str:
    return f"{FORGET_UNCLAIMED_JOB}:{grant_id}"


async def prepare_held_grant(runtime: HubRuntime) -> dict[str, str]:
    """At spawn (managed_child): the bearer the parent will hold, stored before anyone accepts, so
    the accept itself writes no secret. Returns what the spawn keeps in `metadata.spawn`; the
    spawn's transaction passes it to `claim_held_grant`.

    The store is not the database: a crash between this write and the spawn's commit would leave a
    secret no row names. So an outbox entry, committed first, deletes it after a lease unless the
    spawn's commit closed the entry.
    """
    grant_id = uuid.uuid4()
    async with session_scope(runtime.sessionmaker) as session:
        await outbox_service.add(
            session,
            job=FORGET_UNCLAIMED_JOB,
            kwargs={"grant_id": str(grant_id)},
            key=_unclaimed_key(grant_id),
            delay=runtime.settings.outbox.lease_seconds,
        )
    bearer = tokens.issue(tokens.GRANT_BEARER_PREFIX).plaintext
    await runtime.secrets.put(bearer_secret_path(grant_id), {"bearer": bearer})
    return {"held_grant_id": str(grant_id)}


async def claim_held_grant(session: AsyncSession, *, prepared: dict[str, str]) -> None:
    """In the spawn's transaction: the prepared bearer is named by a row from this commit on."""
    await outbox_service.close(session, key=_unclaimed_key(prepared["held_grant_id"]))


async def forget_unclaimed_bearer(runtime: HubRuntime, *, grant_id: uuid.UUID) -> str:
    """The job of an entry the spawn never closed: delete the bearer unless a row names it."""
    async with runtime.sessionmaker() as session:
        named = await session.scalar(
            select(exists().where(FederationPeer.metadata_["spawn"]["held_grant_id"].astext == str(grant_id)))
        )
        granted = await session.get(FederationGrant, grant_id)
    if named or granted is not None:
        return "kept"
    await runtime.secrets.delete(bearer_secret_path(grant_id))
    return "deleted"


def _prepared_id(peer: FederationPeer) -> uuid.UUID | None:
    prepared = (peer.metadata_ or {}).get("spawn", {}).get("held_grant_id")
    return uuid.UUID(prepared) if prepared else None


async def forget_unused_bearer(session: AsyncSession, *, runtime: HubRuntime, peer: FederationPeer) -> None:
    """A prepared bearer that no grant was made with (never accepted) goes with the peer."""
    grant_id = _prepared_id(peer)
    if grant_id is not None and await session.get(FederationGrant, grant_id) is None:
        await runtime.secrets.delete(bearer_secret_path(grant_id))


async def _prepared_bearer(runtime: HubRuntime, prepared: uuid.UUID | None) -> tuple[uuid.UUID, str]:
    """The prepared id and bearer; one made now under that id if the store lost it."""
    grant_id = prepared or uuid.uuid4()
    stored = await runtime.secrets.get(bearer_secret_path(grant_id))
    if stored and stored.get("bearer"):
        return grant_id, str(stored["bearer"])
    bearer = tokens.issue(tokens.GRANT_BEARER_PREFIX).plaintext
    await runtime.secrets.put(bearer_secret_path(grant_id), {"bearer": bearer})
    return grant_id, bearer


# signed_at (the peering is signed: with a CSR also the certificate's fingerprint) and the audit
# event in one round trip (accept is a hot path).
_SIGNED_AND_AUDITED = text(
    """
    WITH signed AS (
        UPDATE federation_peer
        SET client_cert_fingerprint = coalesce(CAST(:fingerprint AS text), client_cert_fingerprint),
            client_cert_serial = coalesce(CAST(:serial AS text), client_cert_serial),
            signed_at = CASE WHEN CAST(:fingerprint AS text) IS NULL THEN coalesce(signed_at, now())
                             ELSE now() END,
            metadata = CASE WHEN CAST(:cert_pem AS text) IS NULL THEN metadata
                            ELSE coalesce(metadata, '{}'::jsonb)
                                 || jsonb_build_object('accept_certificate', CAST(:cert_pem AS text)) END
        WHERE id = CAST(:peer_id AS uuid)
    )
    INSERT INTO audit_event (actor, action, target, outcome, details)
    VALUES (:actor, :action, CAST(:peer_id AS text), 'success', CAST(:details AS jsonb))
    """
)


def _iso(value: datetime | None) -> str:
    return (value or utcnow()).isoformat()


ACCEPT_CERTIFICATE = "accept_certificate"
# The child shows it has the first answer by calling with its certificate (enroll): after that, a
# retried accept no longer carries secrets.
UNCONFIRMED = "accepted"


def _issued_at_accept(peer: FederationPeer, key_fp: str) -> str | None:
    """The certificate the first accept issued for this key, for a retry to get again (not a new one)."""
    pem = (peer.metadata_ or {}).get(ACCEPT_CERTIFICATE)
    if not isinstance(pem, str):
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return pem if ca_service.key_fingerprint(cert.public_key()) == key_fp else None


@dataclass(frozen=True)
class _Parsed:
    """An accept request checked before any query: the body, the CSR, the token's lookup key."""

    request: AcceptRequest
    agreed: int
    csr: x509.CertificateSigningRequest | None
    key_fp: str | None
    public_id: str
    secret_hash: str


def _parse(body: Any) -> _Parsed:
    request, agreed = parse_request(body)
    plaintext = request.acceptance_token.strip()
    csr = ca_service.parse_csr(request.csr_pem) if request.csr_pem else None
    public_id = tokens.public_id_of(tokens.ACCEPTANCE_TOKEN_PREFIX, plaintext)
    if public_id is None:
        raise Unauthorized(NOT_RECOGNIZED)
    key_fp = ca_service.key_fingerprint(csr.public_key()) if csr is not None else None
    return _Parsed(request, agreed, csr, key_fp, public_id, tokens.hash_secret(plaintext))


@metrics.counts_accept_failures
async def accept_request(
    runtime: HubRuntime, *, body: Any, request_host: str | None = None
) -> AcceptResponseData:
    """The accept endpoint: the common first accept on the fast path (fast.py), anything else in
    one SQLAlchemy transaction."""
    parsed = _parse(body)
    data = await _accept_fast(runtime, parsed, request_host)
    if data is not None:
        return data
    async with runtime.sessionmaker() as session:
        return await _accept_in(session, runtime=runtime, parsed=parsed, request_host=request_host)


def accept_connections(runtime: HubRuntime) -> fast.AcceptConnections:
    connections = runtime.extras.get(fast.EXTRAS_KEY)
    if connections is None:
        connections = runtime.extras[fast.EXTRAS_KEY] = fast.AcceptConnections(
            runtime.settings.database_url()
        )
    return connections


def _response(
    runtime: HubRuntime, *, peer_id: uuid.UUID, status: str, peer_kind: str, agreed: int,
    accepted_at: datetime | None, spawn_mode: str, request_host: str | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "peer_id": str(peer_id),
        "status": status,
        "peer_kind": peer_kind,
        "contract_version_agreed": agreed,
        "accepted_at": _iso(accepted_at),
        "handshake_at": _iso(None),
        "spawn_mode": spawn_mode,
        "parent_platform_url": runtime.settings.public_url,
        "federation_url": endpoints.federation_url(
            runtime.settings, runtime.extras, request_host=request_host
        ),
    }


async def _accept_fast(
    runtime: HubRuntime, parsed: _Parsed, request_host: str | None
) -> AcceptResponseData | None:
    """A fresh token's first accept in two round trips (fast.py); None: take the general way."""
    connections = accept_connections(runtime)
    found = await connections.lookup(parsed.public_id, parsed.secret_hash)
    if found is None or found.spawn_mode == "cluster_member":
        return None
    request, csr, peer_id = parsed.request, parsed.csr, found.peer_id
    fingerprint = serial = cert_pem = None
    if csr is not None:
        days = runtime.settings.federation.peer_cert_ttl_days
        cert = runtime.ca.sign_peer_csr(csr, peer_id=peer_id, days=days)
        fingerprint, serial = ca_service.cert_fingerprint(cert), format(cert.serial_number, "x")
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    grant_id = bearer = None
    if found.spawn_mode == "managed_child":
        grant_id, bearer = await _prepared_bearer(runtime, found.held_grant_id)
    child = request.child
    try:
        row = await connections.commit(
            parsed.public_id,
            parsed.secret_hash,
            peer_id,
            parsed.key_fp,
            parsed.agreed,
            fast.dumps([e.model_dump(exclude_none=True) for e in request.endpoints]),
            fast.dumps(request.capabilities),
            fast.dumps(request.extension_slugs),
            (child.platform_id or None) if child else None,
            (child.url or None) if child else None,
            fingerprint,
            serial,
            cert_pem,
            grant_id,
            f"parent-operator@{peer_id}",
            bearer_secret_path(grant_id) if grant_id else None,
            fast.dumps(
                {
                    "auto_issued_by": "managed_child_accept_cascade",
                    "spawn_mode": found.spawn_mode,
                    "spawn_role": found.spawn_role,
                }
            ),
            runtime.settings.federation.grant_ttl_days,
            fast.dumps({"token_public_id": parsed.public_id, "key_bound": parsed.key_fp is not None}),
        )
    except asyncpg.UniqueViolationError:  # the statement failed whole: nothing was consumed
        raise Conflict("a live managed_child_operator grant already exists", code="GRANT_EXISTS") from None
    if row is None:  # another accept of this token came first, or the peer moved on
        return None
    response = _response(
        runtime, peer_id=peer_id, status=row["status"], peer_kind=found.peer_kind,
        agreed=row["contract_version"] or parsed.agreed, accepted_at=row["accepted_at"],
        spawn_mode=found.spawn_mode, request_host=request_host,
    )  # fmt: skip
    if cert_pem is not None:
        response.update(
            client_cert_pem=cert_pem, ca_chain_pem=runtime.ca.chain_pem, client_cert_fingerprint=fingerprint
        )
    if grant_id is not None:
        response["grant"] = _held_grant_info(grant_id, peer_id, row["grant_expires_at"], bearer)
    metrics.accepted(retry=False)
    return AcceptResponseData.model_validate(response)


async def _accept_in(
    session: AsyncSession, *, runtime: HubRuntime, parsed: _Parsed, request_host: str | None
) -> AcceptResponseData:
    request, agreed, csr, key_fp, public_id = (
        parsed.request, parsed.agreed, parsed.csr, parsed.key_fp, parsed.public_id
    )  # fmt: skip
    token = {"public_id": public_id, "secret_hash": parsed.secret_hash}
    peer = await _consume_and_accept(session, **token, key_fp=key_fp, request=request, agreed=agreed)
    retry = False
    if peer is None:  # a used, unknown or expired token, or a peer that may not be accepted
        await session.rollback()
        if await _live_token_peer(session, **token) is not None:
            # a live token whose peer is no longer `proposed`: the token stays as it is
            raise Unprocessable(
                "Transition to accepted is not allowed for this peer", code="INVALID_TRANSITION"
            )
        else:
            window = timedelta(seconds=runtime.settings.federation.accept_retry_window_seconds)
            peer = await _retry_peer(session, **token, key_fp=key_fp, window=window)
            retry = True
    response = _response(
        runtime, peer_id=peer.id, status=peer.status, peer_kind=peer.peer_kind,
        agreed=peer.contract_version or agreed, accepted_at=peer.accepted_at,
        spawn_mode=peer.spawn_mode, request_host=request_host,
    )  # fmt: skip
    fingerprint = serial = cert_pem = None
    if csr is not None and key_fp is not None:
        issued = _issued_at_accept(peer, key_fp) if retry else None
        if issued is None:
            days = runtime.settings.federation.peer_cert_ttl_days
            cert = runtime.ca.sign_peer_csr(csr, peer_id=peer.id, days=days)
            fingerprint, serial = ca_service.cert_fingerprint(cert), format(cert.serial_number, "x")
            cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        else:
            cert = x509.load_pem_x509_certificate(issued.encode())
        response.update(
            client_cert_pem=issued or cert_pem,
            ca_chain_pem=runtime.ca.chain_pem,
            client_cert_fingerprint=ca_service.cert_fingerprint(cert),
        )
    if peer.spawn_mode == "managed_child":
        response["grant"] = await _held_grant(
            session, runtime=runtime, peer=peer, fresh=not retry, with_bearer=peer.status == UNCONFIRMED
        )
    if peer.spawn_mode == "cluster_member":
        from hub.replication import service as replication_service

        response.update(
            await replication_service.accept_additions(
                session, runtime=runtime, peer=peer, key_bound=csr is not None
            )
        )
    await session.execute(
        _SIGNED_AND_AUDITED,
        {
            "peer_id": peer.id,
            "fingerprint": fingerprint,
            "serial": serial,
            "cert_pem": cert_pem,
            "actor": f"peer:{peer.id}",
            "action": "child.accept.retry" if retry else "child.accept",
            "details": json.dumps({"token_public_id": public_id, "key_bound": key_fp is not None}),
        },
    )
    await session.commit()
    metrics.accepted(retry=retry)
    return AcceptResponseData.model_validate(response)

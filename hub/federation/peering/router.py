"""Federation API (peer → us, client certificate): enroll, heartbeat, peer, revoke; and the calls
a managing parent makes under the grant we gave it (client certificate + the grant's bearer)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from hub import edge
from hub.dependencies import RuntimeDep, SessionDep
from hub.exceptions import HubError, ServiceUnavailable, Unauthorized, Unprocessable
from hub.federation import peering
from hub.federation.grants import service as grants_service
from hub.federation.peering import auth
from hub.federation.peering import service as peering_service
from hub.federation.peering.compat import schema_compatibility
from hub.federation.peering.heartbeats import NOTHING_REPORTED, HeartbeatBatcher, Reported
from hub.federation.peers import service as peers_service
from hub.federation.peers.models import FederationPeer
from hub.federation.policies import service as policies_service
from hub.federation.policies.schemas import CascadeRequest, CascadeResult, PolicyList, PolicyView
from hub.runtime import HubRuntime
from hub.spawn.schemas import RevokeRequest
from hub.wire import Envelope, envelope, error_body, send_json
from shared_contract.enroll import EnrollRequest
from shared_contract.heartbeat import HeartbeatRequest
from shared_contract.renew import RenewRequest

log = logging.getLogger(__name__)
router = APIRouter(prefix="/system/federation_api", tags=["federation"])
HEARTBEAT_PATH = peering.HEARTBEAT_PATH
MAX_HEARTBEAT_BODY = 16 * 1024


def peer_identity(request: Request) -> auth.PeerIdentity:
    runtime: HubRuntime = request.app.state.runtime
    return _identify(runtime, request.scope)


def _identify(runtime: HubRuntime, scope: Scope) -> auth.PeerIdentity:
    tls = scope.get("extensions", {}).get("tls") or {}
    cert_header = runtime.settings.federation.client_cert_header
    wanted = cert_header.lower()
    name = wanted.encode("latin-1")
    return auth.identify(
        tls_chain=tls.get("client_cert_chain"),
        # the only header identify() reads, each time it was sent
        headers=[(wanted, v.decode("latin-1")) for k, v in scope["headers"] if k.lower() == name],
        socket_peer=edge.socket_peer(scope),
        trusted_proxies=runtime.settings.federation.trusted_proxies,
        cert_header=cert_header,
    )


IdentityDep = Annotated[auth.PeerIdentity, Depends(peer_identity)]


def _client_certificate(request: Request) -> str | None:
    chain = (request.scope.get("extensions", {}).get("tls") or {}).get("client_cert_chain")
    return chain[0] if chain else None


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def live_peer(request: Request, identity: IdentityDep, session: SessionDep) -> FederationPeer:
    return await peering_service.authenticate(
        session,
        identity=identity,
        statuses=peering_service.LIVE_STATUSES,
        certificate_pem=_client_certificate(request),
    )


CallerDep = Annotated[FederationPeer, Depends(live_peer)]


async def enrolling_peer(request: Request, session: SessionDep) -> FederationPeer:
    """The live peer behind an enroll call; a refused one leaves its cause on the accepted peer
    its body names, for the `peer_accepted_never_enrolled` finding (nothing else is written)."""
    try:
        return await live_peer(request, peer_identity(request), session)
    except Unauthorized:
        runtime: HubRuntime = request.app.state.runtime
        tls = request.scope.get("extensions", {}).get("tls") or {}
        cause = auth.refusal_cause(
            tls_chain=tls.get("client_cert_chain"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.scope["headers"]],
            socket_peer=edge.socket_peer(request.scope),
            trusted_proxies=runtime.settings.federation.trusted_proxies,
            cert_header=runtime.settings.federation.client_cert_header,
            scheme=request.url.scheme,
        )
        try:
            body = await request.json()
        except ValueError:
            body = None
        platform_id = body.get("platform_id") if isinstance(body, dict) else None
        if isinstance(platform_id, str) and platform_id:
            await peering_service.note_refused_enroll(session, platform_id=platform_id, cause=cause)
        raise


def under_grant(action: str, *, required: bool = True) -> Callable[..., Coroutine[Any, Any, FederationPeer]]:
    """The calling peer, if the grant we gave it (its bearer) covers `action` (DESIGN §5)."""

    async def dependency(request: Request, caller: CallerDep, session: SessionDep) -> FederationPeer:
        await grants_service.authorize(
            session, peer=caller, bearer=_bearer(request), action=action, required=required
        )
        return caller

    return dependency


@router.post("/enroll", status_code=200)
async def enroll(
    request: EnrollRequest,
    caller: Annotated[FederationPeer, Depends(enrolling_peer)],
    session: SessionDep,
    runtime: RuntimeDep,
) -> dict:
    """The child finished its first run: accepted → enrolled (later: where it is reached now)."""
    result = await peering_service.enroll(session, peer=caller, request=request, runtime=runtime)
    return envelope(result.to_wire())


@router.post("/renew_certificate", status_code=200)
async def renew_certificate(
    request: RenewRequest,
    caller: CallerDep,
    identity: IdentityDep,
    session: SessionDep,
    runtime: RuntimeDep,
) -> dict:
    """A child renews the client certificate it calls with, authenticated by that certificate;
    from the answer on, only the new one identifies it."""
    result = await peering_service.renew_certificate(
        session, runtime=runtime, peer=caller, request=request, presented=identity.cert_fingerprint
    )
    return envelope(result.to_wire())


@router.get("/peer", status_code=200)
async def peer(
    caller: Annotated[FederationPeer, Depends(under_grant("system.peer.read", required=False))],
    session: SessionDep,
) -> dict:
    """What the caller is to us: its peer record as we hold it (under the grant, if we gave one)."""
    detail = await peers_service.detail(session, caller)
    return envelope({"peer": detail.model_dump(mode="json")})


@router.get("/intervention_policies", status_code=200, response_model=Envelope[PolicyList])
async def intervention_policies(
    caller: Annotated[FederationPeer, Depends(under_grant("system.intervention_policies.read"))],
    session: SessionDep,
) -> dict:
    """Our policies, local and cascaded, for the parent that manages us."""
    policies = [PolicyView.model_validate(p) for p in await policies_service.get_all(session)]
    return envelope(PolicyList(policies=policies, count=len(policies)))


@router.put("/intervention_policies", status_code=200, response_model=Envelope[CascadeResult])
async def cascade_policies(
    request: CascadeRequest,
    caller: Annotated[FederationPeer, Depends(under_grant("system.intervention_policies.write"))],
    session: SessionDep,
) -> dict:
    """The managing parent's `system.*` policies, as our overridable defaults."""
    return envelope(await policies_service.apply_cascade(session, peer=caller, request=request))


@router.get("/audit_events", status_code=200)
async def audit_events(
    caller: Annotated[FederationPeer, Depends(under_grant("system.audit.read"))],
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    """Our newest audit events, for a parent with admin scope."""
    return envelope({"events": await peering_service.recent_audit_events(session, limit=limit)})


@router.post("/revoke", status_code=200)
async def revoke(
    caller: CallerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Annotated[RevokeRequest | None, Body()] = None,
) -> dict:
    """The other side revoked the peering (`peer.revoke!`): we revoke ours and stop calling."""
    said = request.reason if request and request.reason else None
    peer = await peers_service.revoke_peer(
        session,
        runtime=runtime,
        peer=caller,
        reason=f"revoked by the peer: {said}" if said else "revoked by the peer",
        actor=f"peer:{caller.id}",
        notify=False,
    )
    return envelope(
        {"status": peer.status, "revoked_at": peer.revoked_at.isoformat() if peer.revoked_at else None}
    )


@router.post("/grants/{grant_id}/revoke", status_code=200)
async def grant_revoked(
    grant_id: str,
    caller: CallerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Annotated[RevokeRequest | None, Body()] = None,
) -> dict:
    """The peer gave up a grant we gave it: we refuse its bearer from now on."""
    grant = await grants_service.revoked_by_peer(
        session,
        peer=caller,
        grant_id=grant_id,
        reason=request.reason if request else None,
        retention_days=runtime.settings.federation.grant_retention_days,
    )
    return envelope({"grant_id": str(grant.id), "state": grant.state()})


def _batcher(runtime: HubRuntime) -> HeartbeatBatcher:
    batcher = runtime.extras.get("heartbeats")
    if batcher is None:
        batcher = runtime.extras["heartbeats"] = HeartbeatBatcher(runtime.settings.database_url())
    return batcher


async def _read_body(receive: Receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_HEARTBEAT_BODY:
            raise Unprocessable("request body too large", code="BODY_TOO_LARGE")
    return body


async def _beat(runtime: HubRuntime, scope: Scope, receive: Receive) -> dict:
    identity = _identify(runtime, scope)
    body = await _read_body(receive)
    reported = NOTHING_REPORTED
    if body.strip():
        try:
            reported = _reported(HeartbeatRequest.model_validate_json(body))
        except ValidationError:
            raise Unprocessable("invalid heartbeat body", code="INVALID_REQUEST") from None
    try:
        beat = await _batcher(runtime).beat(identity.peer_id, identity.cert_fingerprint, reported)
    except Exception as e:  # the database is away: say so, in the one error shape
        raise ServiceUnavailable("heartbeat not recorded: the database is unavailable") from e
    if beat is None:
        raise Unauthorized("A valid peer client certificate is required")
    return envelope(
        {
            "status": beat.status,
            "last_heartbeat_at": beat.last_heartbeat_at.isoformat(),
            "our_endpoints": [],
            "schema_compatibility": schema_compatibility(beat.platform_version),
        }
    )


def _json(value: Any) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value else None


def _text(value: str | None) -> str | None:
    return (value or "").strip() or None


def _reported(request: HeartbeatRequest) -> Reported:
    """What the body says, the original's way: a blank value leaves the stored one unchanged."""
    endpoints = [e.model_dump(exclude_none=True) for e in request.endpoints] if request.endpoints else None
    cursor = request.sync_cursor.strip() if isinstance(request.sync_cursor, str) else request.sync_cursor
    slugs = request.extension_slugs
    return Reported(
        capabilities=_json(request.capabilities),
        endpoints=_json(endpoints),
        sync_cursor=_json(cursor),
        extension_slugs=_json([slug.strip() for slug in slugs if slug.strip()]) if slugs else None,
        platform_version=_text(request.platform_version),
        data_residency=_text(request.data_residency),
    )


async def heartbeat(runtime: HubRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """A live peer says it is alive: raw ASGI, since this is the hot path (DESIGN §8)."""
    try:
        status, payload = 200, await _beat(runtime, scope, receive)
    except HubError as e:
        status, payload = e.status_code, error_body(e.message, e.code, e.details)
    except Exception as e:  # still the one error shape, never uvicorn's bare 500 and a traceback out
        log.error("unhandled error on a heartbeat: %s", type(e).__name__, exc_info=e)
        status, payload = 500, error_body("Internal server error", "INTERNAL_ERROR")
    await send_json(send, status, pydantic_core.to_json(payload))

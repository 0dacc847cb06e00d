"""Federation API (peer → us, client certificate): enroll, heartbeat, peer."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from hub.dependencies import RuntimeDep, SessionDep
from hub.exceptions import HubError, Unauthorized, Unprocessable
from hub.federation.peering import auth
from hub.federation.peering import service as peering_service
from hub.federation.peering.heartbeats import HeartbeatBatcher
from hub.federation.peers import service as peers_service
from hub.runtime import HubRuntime
from hub.wire import envelope, error_body
from shared_contract.enroll import EnrollRequest
from shared_contract.heartbeat import HeartbeatRequest

router = APIRouter(prefix="/system/federation_api", tags=["federation"])
HEARTBEAT_PATH = "/api/v1/system/federation_api/heartbeat"
MAX_HEARTBEAT_BODY = 16 * 1024


def peer_identity(request: Request) -> auth.PeerIdentity:
    runtime: HubRuntime = request.app.state.runtime
    tls = request.scope.get("extensions", {}).get("tls") or {}
    return auth.identify(
        tls_chain=tls.get("client_cert_chain"),
        headers={k: v for k, v in request.headers.items()},
        client_host=request.client.host if request.client else None,
        trusted_proxies=runtime.settings.federation.trusted_proxies,
    )


IdentityDep = Annotated[auth.PeerIdentity, Depends(peer_identity)]


@router.post("/enroll", status_code=200)
async def enroll(request: EnrollRequest, identity: IdentityDep, session: SessionDep) -> dict:
    """The child finished its first run: accepted → enrolled."""
    peer = await peering_service.authenticate(
        session, identity=identity, statuses=peering_service.ENROLL_STATUSES
    )
    return envelope((await peering_service.enroll(session, peer=peer, request=request)).to_wire())


@router.get("/peer", status_code=200)
async def peer(identity: IdentityDep, session: SessionDep, runtime: RuntimeDep) -> dict:
    """What the caller is to us: its peer record as we hold it."""
    row = await peering_service.authenticate(
        session, identity=identity, statuses=peering_service.LIVE_STATUSES
    )
    detail = await peers_service.detail(session, row)
    return envelope({"peer": detail.model_dump(mode="json")})


def _batcher(runtime: HubRuntime) -> HeartbeatBatcher:
    batcher = runtime.extras.get("heartbeats")
    if batcher is None:
        batcher = runtime.extras["heartbeats"] = HeartbeatBatcher(runtime.engine)
    return batcher


async def heartbeat(request: Request) -> Response:
    """A live peer says it is alive (plain Starlette: this is the hot path)."""
    try:
        identity = peer_identity(request)
        body = await request.body()
        if len(body) > MAX_HEARTBEAT_BODY:
            raise Unprocessable("request body too large", code="BODY_TOO_LARGE")
        if body.strip():
            try:
                HeartbeatRequest.model_validate(json.loads(body))
            except (ValueError, ValidationError):
                raise Unprocessable("invalid heartbeat body", code="INVALID_REQUEST") from None
        runtime: HubRuntime = request.app.state.runtime
        beat = await _batcher(runtime).beat(identity.peer_id, identity.cert_fingerprint)
        if beat is None:
            raise Unauthorized("A valid peer client certificate is required")
    except HubError as e:
        return JSONResponse(error_body(e.message, e.code, e.details), e.status_code)
    return JSONResponse(
        envelope(
            {
                "status": beat.status,
                "last_heartbeat_at": beat.last_heartbeat_at.isoformat(),
                "our_endpoints": [],
                "schema_compatibility": {"contract_version": 1, "compatible": True},
            }
        )
    )

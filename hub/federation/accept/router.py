"""Federation API (child → parent): accept, as the original agent calls it."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from hub.dependencies import RuntimeDep, SessionDep
from hub.exceptions import Unprocessable
from hub.federation.accept import service as accept_service
from hub.wire import envelope

router = APIRouter(prefix="/system/federation_api", tags=["federation"])
MAX_BODY = 64 * 1024


@router.post("/accept", status_code=200)
async def accept(request: Request, session: SessionDep, runtime: RuntimeDep) -> dict:
    """Redeem a single-use acceptance token; with a CSR, get a client certificate too."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise Unprocessable("request body too large", code="BODY_TOO_LARGE")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise Unprocessable("request body must be JSON", code="INVALID_REQUEST") from None
    data = await accept_service.accept(
        session, runtime=runtime, body=body, request_host=request.headers.get("host")
    )
    return envelope(data.to_wire())

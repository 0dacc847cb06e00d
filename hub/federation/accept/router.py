"""Federation API (child → parent): accept, as the original agent calls it.

The route is declared for the OpenAPI document and for apps without the hub's dispatch; the hub
serves it as raw ASGI (`serve_raw`, from HubApp.dispatch), since accept is a hot path (DESIGN §8):
the middleware stack and FastAPI's routing cost more than the accept's own work.
"""

from __future__ import annotations

import json
import logging

import pydantic_core
from fastapi import APIRouter, Request
from starlette.types import Receive, Scope, Send

from hub import guard
from hub.dependencies import RuntimeDep
from hub.exceptions import HubError, Unprocessable
from hub.federation.accept import service as accept_service
from hub.runtime import HubRuntime
from hub.wire import envelope, error_body, send_json

log = logging.getLogger(__name__)
router = APIRouter(prefix="/system/federation_api", tags=["federation"])
ACCEPT_PATH = "/api/v1/system/federation_api/accept"
MAX_BODY = 64 * 1024


def _body_json(raw: bytes) -> object:
    if len(raw) > MAX_BODY:
        raise Unprocessable("request body too large", code="BODY_TOO_LARGE")
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise Unprocessable("request body must be JSON", code="INVALID_REQUEST") from None


@router.post("/accept", status_code=200)
async def accept(request: Request, runtime: RuntimeDep) -> dict:
    """Redeem a single-use acceptance token; with a CSR, get a client certificate too."""
    body = _body_json(await request.body())
    data = await accept_service.accept_request(runtime, body=body, request_host=request.headers.get("host"))
    return envelope(data.to_wire())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def serve_raw(runtime: HubRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """The same endpoint as raw ASGI: the one error shape, and what the guard classifies (a lost
    database: 503; a serialization failure: run again) as with the middleware. HubApp.dispatch runs
    it inside the guard and, outside that, RequestContextMiddleware (the request id)."""
    try:
        raw, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        data = await accept_service.accept_request(
            runtime, body=_body_json(raw), request_host=_header(scope, b"host")
        )
        status, payload = 200, envelope(data.to_wire())
    except HubError as e:
        status, payload = e.status_code, error_body(e.message, e.code, e.details)
    except Exception as e:
        if guard.classify(e) is not None:
            raise
        log.error("unhandled error on POST %s: %s", ACCEPT_PATH, type(e).__name__, exc_info=e)
        status, payload = 500, error_body("Internal server error", "INTERNAL_ERROR")
    await send_json(send, status, pydantic_core.to_json(payload))

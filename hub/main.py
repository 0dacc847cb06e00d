"""create_app(): lifespan, routers, the one error handler."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hub import api, console, guard, openapi_links
from hub.config import Settings, get_settings
from hub.dependencies import require
from hub.edge import Edge
from hub.exceptions import HubError
from hub.federation.accept import router as accept_router
from hub.federation.peering import router as peering_router
from hub.federation.peers import listing
from hub.observability import scrape
from hub.observability.context import RequestContextMiddleware
from hub.operators.permissions import METRICS_READ
from hub.runtime import HubRuntime
from hub.wire import error_body

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 2.0
_READY_NAMES = {
    "database": "the database is unreachable",
    "redis": "Redis is unreachable",
    "disk": "low free space in the data dir",
}


def _free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the data dir's filesystem (None if unreadable)."""
    for candidate in (path, *path.parents):
        try:
            stats = os.statvfs(candidate)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


def _validation_details(exc: RequestValidationError) -> dict:
    fields = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        fields.append({"field": loc, "message": err.get("msg", "invalid")})
    return {"fields": fields}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.code, exc.details), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(_validation_message(exc), "VALIDATION_FAILED", _validation_details(exc)), 400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(error_body(str(exc.detail), code), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,  # the log's redaction keeps secrets out of the traceback
        )
        return JSONResponse(error_body("Internal server error", "INTERNAL_ERROR"), 500)


class HubApp(FastAPI):
    """FastAPI behind the hub's edge (hub/edge.py: listener, proxy trust, body limits), except that
    heartbeats, accepts and the children list skip the middleware stack and the router: on those
    hot paths they cost more than the work itself (DESIGN §8)."""

    edge: Edge | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is not None:
            await self.edge(scope, receive, send)
        else:
            await self.dispatch(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == peering_router.HEARTBEAT_PATH
            and scope["method"] == "POST"
        ):
            # not guarded: it answers every failure itself (a lost database is its own 503)
            await peering_router.heartbeat(self.state.runtime, scope, receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["path"] == accept_router.ACCEPT_PATH
            and scope["method"] == "POST"
        ):
            await self._accept_with_id(scope, receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["path"] == listing.CHILDREN_PATH
            and scope["method"] == "GET"
            and await listing.serve_raw(self.state.runtime, scope, send)
        ):
            return
        await super().__call__(scope, receive, send)

    @functools.cached_property
    def _accept_with_id(self) -> RequestContextMiddleware:
        """The request id outside the guard: the guard's own 503 carries X-Request-ID too."""
        return RequestContextMiddleware(self._guarded_accept)

    async def _guarded_accept(self, scope: Scope, receive: Receive, send: Send) -> None:
        await guard.guarded(self._accept, scope, receive, send)

    async def _accept(self, scope: Scope, receive: Receive, send: Send) -> None:
        await accept_router.serve_raw(self.state.runtime, scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, plus the links from the operations that return ids to those taking them."""
        if self.openapi_schema is None:
            openapi_links.add_links(super().openapi())
        return super().openapi()


def create_app(settings: Settings | None = None, runtime: HubRuntime | None = None) -> FastAPI:
    """The hub's ASGI app; `runtime` lets a caller (tests, `serve`) own the connections."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or await HubRuntime.open(settings)
        try:
            yield
        finally:
            if owned:
                await app.state.runtime.close()

    docs = settings.api_docs_enabled
    app = HubApp(
        title="Powernode Spawn hub",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.edge = Edge(
        app.dispatch,
        trusted_proxies=settings.federation.trusted_proxies,
        max_body_bytes=settings.max_body_bytes,
        federation_max_body_bytes=settings.federation.max_body_bytes,
    )
    if runtime is not None:
        app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(guard.GuardMiddleware)
    app.add_middleware(RequestContextMiddleware)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"success": True, "data": {"status": "ok"}}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """503 naming what is missing: the database, Redis, or free space in the data dir."""
        rt: HubRuntime = request.app.state.runtime
        checks = {"database": False, "redis": False, "disk": False}
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                async with rt.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception as e:  # readiness reports, it does not raise
            log.warning("readyz: database unreachable: %s", type(e).__name__)
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                checks["redis"] = bool(await rt.redis.ping())
        except Exception as e:
            log.warning("readyz: redis unreachable: %s", type(e).__name__)
        free = _free_bytes(rt.settings.data_dir)
        checks["disk"] = free is not None and free >= rt.settings.min_free_bytes
        if all(checks.values()):
            data = {"status": "ready", "checks": checks, "data_dir_free_bytes": free}
            return JSONResponse({"success": True, "data": data})
        missing = [_READY_NAMES[name] for name, ok in checks.items() if not ok]
        details = {
            "checks": checks,
            "data_dir_free_bytes": free,
            "min_free_bytes": rt.settings.min_free_bytes,
        }
        return JSONResponse(
            error_body("Not ready: " + ", ".join(missing), "NOT_READY", details), status_code=503
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: this process's counters and the database's gauges, read now.
        With POWERNODE_METRICS_REQUIRE_TOKEN (the production default) only for an operator token
        carrying system.metrics.read."""
        if settings.metrics_token_required:
            await require(METRICS_READ)(request, request.app.state.runtime)
        body = await scrape.render(request.app.state.runtime)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    api.include_routers(app)
    console.install(app)
    return app

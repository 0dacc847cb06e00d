"""Wiring only: which router under which prefix."""

from __future__ import annotations

from fastapi import FastAPI

from hub.audit import router as audit_router
from hub.federation.accept import router as accept_router
from hub.federation.findings import router as findings_router
from hub.federation.grants import router as grants_router
from hub.federation.peering import router as peering_router
from hub.federation.peers import router as peers_router
from hub.federation.policies import router as policies_router
from hub.operators import router as operators_router
from hub.provisioning import router as templates_router
from hub.replication import router as replication_router
from hub.spawn import router as spawn_router

API_PREFIX = "/api/v1"


def include_routers(app: FastAPI) -> None:
    app.include_router(spawn_router.router, prefix=API_PREFIX)
    app.include_router(templates_router.router, prefix=API_PREFIX)
    app.include_router(accept_router.router, prefix=API_PREFIX)
    app.include_router(peering_router.router, prefix=API_PREFIX)
    app.include_router(findings_router.router, prefix=API_PREFIX)
    app.include_router(grants_router.router, prefix=API_PREFIX)
    app.include_router(peers_router.router, prefix=API_PREFIX)
    app.include_router(policies_router.router, prefix=API_PREFIX)
    app.include_router(replication_router.router, prefix=API_PREFIX)
    app.include_router(replication_router.federation_router, prefix=API_PREFIX)
    app.include_router(audit_router.router, prefix=API_PREFIX)
    app.include_router(operators_router.router, prefix=API_PREFIX)

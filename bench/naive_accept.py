"""The baseline of the accept benchmark: a naive accept endpoint, ORM per request.

What a first implementation would write: FastAPI parses the body, one SQLAlchemy ORM session per
request loads the token row (FOR UPDATE) and the peer, checks the hash and expiry, verifies the
CSR and signs it with the same federation CA (the hub's key files), marks token and peer, adds the
held managed_child grant and an audit event, commits, and answers the certificate. Same event loop
and log level as the hub.

    python -m bench.naive_accept --port P --database-url URL --ca-dir DIR [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import hub.models  # noqa: F401 - every table, so foreign keys resolve
from hub.audit.models import AuditEvent
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.secrets import tokens
from hub.secrets.ca import FederationCA

PATH = "/accept"


def load_ca(directory: Path) -> FederationCA:
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    return FederationCA(key=key, cert=cert)  # type: ignore[arg-type]


def create_app(database_url: str, ca: FederationCA) -> FastAPI:
    engine = create_async_engine(database_url, pool_size=10, max_overflow=10)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    def refuse() -> JSONResponse:
        return JSONResponse({"success": False, "error": "token not recognised"}, 401)

    @app.post(PATH)
    async def accept(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        plaintext = str(body.get("acceptance_token", ""))
        public_id = tokens.public_id_of(tokens.ACCEPTANCE_TOKEN_PREFIX, plaintext)
        if public_id is None:
            return refuse()
        now = datetime.now(UTC)
        async with sessions() as session, session.begin():
            token = await session.scalar(
                select(AcceptanceToken).where(AcceptanceToken.public_id == public_id).with_for_update()
            )
            if (
                token is None
                or token.consumed_at is not None
                or token.expires_at <= now
                or not hmac.compare_digest(tokens.hash_secret(plaintext), token.secret_hash)
            ):
                return refuse()
            peer = await session.get(FederationPeer, token.peer_id)
            if peer is None or peer.status != "proposed":
                return refuse()
            csr = x509.load_pem_x509_csr(str(body["csr_pem"]).encode())
            if not csr.is_signature_valid:
                return JSONResponse({"success": False, "error": "bad CSR"}, 422)
            cert = ca.sign_peer_csr(csr, peer_id=peer.id)
            token.consumed_at = now
            peer.status = "accepted"
            peer.accepted_at = now
            peer.client_cert_fingerprint = cert.fingerprint(hashes.SHA256()).hex()
            session.add(
                FederationGrant(
                    id=uuid.uuid4(),
                    peer_id=peer.id,
                    direction="held",
                    resource_kind="managed_child_operator",
                    remote_subject=f"platform:{peer.id}",
                    permission_scopes=["read", "write", "admin"],
                    expires_at=now + timedelta(days=365),
                )
            )
            session.add(AuditEvent(actor=f"peer:{peer.id}", action="child.accept", target=str(peer.id)))
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return JSONResponse(
            {"success": True, "data": {"peer_id": str(peer.id), "status": "accepted", "client_cert_pem": pem}}
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_accept")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--ca-dir", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    url = args.database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    app = create_app(url, load_ca(args.ca_dir))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level=args.log_level))
    if args.uvloop:
        import uvloop

        uvloop.run(server.serve())
    else:
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()

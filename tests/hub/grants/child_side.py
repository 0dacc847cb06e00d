"""Arrangements for tests that play a child hub: its parent's first-run result ingested, and
requests that arrive as the parent (client certificate or a trusted proxy's CN header)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.federation import bootstrap
from hub.federation.grants.models import MANAGED_CHILD_OPERATOR
from hub.runtime import HubRuntime
from hub.secrets import ca as ca_service
from hub.secrets import tokens
from hub.secrets.store import LocalEncryptedStore
from shared_contract.accept import GrantInfo
from shared_contract.first_run import FirstRunResult

FEDERATION_API = "/api/v1/system/federation_api"


@dataclass
class OurParent:
    """What a child hub holds about the parent that spawned it."""

    row_id: uuid.UUID  # our `spawn_role: child` row
    parent_peer_id: uuid.UUID  # the parent's id for us: the CN its certificates carry
    ca: ca_service.FederationCA
    bearer: str | None = field(repr=False)

    def headers(self, bearer: str | None = "ours") -> dict[str, str]:
        """As the parent behind the trusted proxy; `bearer="ours"` sends the grant's bearer."""
        headers = {"X-Client-S-DN-CN": f"{ca_service.PARENT_CN_PREFIX}{self.parent_peer_id}"}
        token = self.bearer if bearer == "ours" else bearer
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def client_certificate(self, ca: ca_service.FederationCA | None = None) -> str:
        """A certificate the parent issues itself for calling us (or one from another `ca`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (ca or self.ca).sign_parent_client_cert(key.public_key(), peer_id=self.parent_peer_id)
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def own_certificate(self) -> str:
        """The certificate the parent issued *us* at accept: CN `fed:<parent_peer_id>` too."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
            .sign(key, hashes.SHA256())
        )
        cert = self.ca.sign_peer_csr(csr, peer_id=self.parent_peer_id)
        return cert.public_bytes(serialization.Encoding.PEM).decode()


async def new_ca(directory: Path) -> ca_service.FederationCA:
    return await ca_service.load_or_create(data_dir=directory, store=LocalEncryptedStore(directory))


async def become_child(runtime: HubRuntime, directory: Path, *, mode: str = "managed_child") -> OurParent:
    """Ingest a first-run result as the child hub does at start: our parent row and its grant."""
    parent_dir = directory / "parent"
    ca = await new_ca(parent_dir)
    parent_peer_id = uuid.uuid4()
    bearer = tokens.issue(tokens.GRANT_BEARER_PREFIX).plaintext if mode == "managed_child" else None
    now = datetime.now(UTC)
    grant = None
    if bearer is not None:
        grant = GrantInfo(
            id=str(uuid.uuid4()),
            resource_kind=MANAGED_CHILD_OPERATOR,
            permission_scopes=["read", "write", "admin"],
            remote_subject=f"parent-operator@{parent_peer_id}",
            expires_at=(now + timedelta(days=365)).isoformat(),
            bearer_token=bearer,
        )
    result = FirstRunResult(
        peer_id=str(parent_peer_id),
        parent_peer_id=str(parent_peer_id),
        parent_url="https://parent.example.test:9443",
        spawn_mode=mode,
        contract_version_agreed=1,
        accepted_at=now.isoformat(),
        client_cert_path=str(directory / "agent" / "client.crt"),
        client_key_path=str(directory / "agent" / "client.key"),
        ca_chain_path=str(parent_dir / "ca" / "ca.crt"),
        client_cert_fingerprint="ab" * 32,
        grant=grant,
        completed_at=now.isoformat(),
    )
    result.write(bootstrap.first_run_result_path(runtime))
    row_id = await bootstrap.ingest_first_run(runtime)
    assert row_id is not None
    return OurParent(row_id=row_id, parent_peer_id=parent_peer_id, ca=ca, bearer=bearer)


def with_client_certificate(app: Any, pem: str) -> Any:
    """The app as our own TLS listener presents it: the client certificate in the ASGI TLS extension."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem]}
        await app(scope, receive, send)

    return wrapped

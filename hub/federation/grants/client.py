"""Calls from this hub to a child's federation API, over mTLS.

The child's federation listener is HTTPS with a certificate from the child's own CA; it told us
both at enroll (an endpoint with scope `federation`, its CA chain in `capabilities`). We
authenticate with a client certificate our own CA issues to ourselves for the call, CN
`fed:<our peer id of that child>`: the child trusts our CA (it pinned it at first run) and knows
that id as its parent's (`metadata.identity.parent_peer_id` of its peer row). The certificate is
short-lived and made per client, so no private key of ours is kept for it.
"""

from __future__ import annotations

import ssl
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.federation.peering.client import API_BASE
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime
from hub.secrets.store import write_private_file

FEDERATION_SCOPE = "federation"
CA_CAPABILITY = "federation_ca_pem"
CLIENT_CERT_DAYS = 1
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class ChildEndpoint:
    url: str
    ca_pem: str

    def __repr__(self) -> str:
        return f"ChildEndpoint({self.url!r})"


def endpoint_of(peer: FederationPeer) -> ChildEndpoint | None:
    """Where the child's federation API listens and the CA its certificate comes from, if it said."""
    url = next(
        (
            e.get("url")
            for e in peer.endpoints or []
            if isinstance(e, dict) and e.get("scope") == FEDERATION_SCOPE
        ),
        None,
    )
    ca_pem = (peer.capabilities or {}).get(CA_CAPABILITY)
    if not url or not isinstance(ca_pem, str):
        return None
    return ChildEndpoint(url=str(url), ca_pem=ca_pem)


class CallFailed(Exception):
    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _ssl_context(runtime: HubRuntime, *, peer_id: uuid.UUID, ca_pem: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parent")]))
        .sign(key, hashes.SHA256())
    )
    cert = runtime.ca.sign_peer_csr(csr, peer_id=peer_id, days=CLIENT_CERT_DAYS)
    context = ssl.create_default_context(cadata=ca_pem)
    # load_cert_chain reads files only: they live for this call in a private directory.
    with tempfile.TemporaryDirectory(dir=runtime.settings.data_dir, prefix=".client-") as directory:
        cert_file, key_file = Path(directory) / "client.crt", Path(directory) / "client.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_file(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


async def call(
    runtime: HubRuntime,
    *,
    peer: FederationPeer,
    method: str,
    path: str,
    bearer: str | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One call to the child's federation API; the envelope's `data`, or CallFailed."""
    endpoint = endpoint_of(peer)
    if endpoint is None:
        raise CallFailed(
            None, "NO_FEDERATION_ENDPOINT", f"{peer.name} has not told us its federation endpoint"
        )
    headers = {"User-Agent": "powernode-hub/federation"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    context = _ssl_context(runtime, peer_id=peer.id, ca_pem=endpoint.ca_pem)
    try:
        async with httpx.AsyncClient(verify=context, timeout=CALL_TIMEOUT) as http:
            response = await http.request(
                method, endpoint.url.rstrip("/") + API_BASE + path, json=body, headers=headers
            )
    except httpx.HTTPError as e:
        raise CallFailed(None, "UNREACHABLE", f"{type(e).__name__} calling {path}") from e
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if response.status_code >= 400 or not payload.get("success"):
        raise CallFailed(
            response.status_code,
            str(payload.get("code") or "HTTP_ERROR"),
            str(payload.get("error") or response.reason_phrase),
        )
    data = payload.get("data")
    return data if isinstance(data, dict) else {}

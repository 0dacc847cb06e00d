"""Calls from this hub to a child's federation API, over mTLS, and only there.

The child's federation listener is HTTPS with a certificate from the child's own CA; it told us
both at enroll (an endpoint with scope `federation`, its CA chain in `capabilities`), over its
client certificate, and we pinned that CA then. We authenticate with a client certificate our own
CA issues to ourselves for the call, CN `fed-parent:<our peer id of that child>`: the child trusts
our CA (it pinned it at first run) and knows that id as its parent's
(`metadata.identity.parent_peer_id` of its peer row). The certificate is short-lived and made per
client, so no private key of ours is kept for it.

What we send the grant's bearer to is bounded (DESIGN §5): an `https://` URL only, verified
against the pinned CA and nothing else (no system roots, no proxy from the environment), no
redirect followed, the answer cut off past MAX_RESPONSE_BYTES and the whole call past
`POWERNODE_FEDERATION_CALL_TIMEOUT_SECONDS`. What the child says is parsed here; nothing of it
is passed on raw.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.federation.peering.client import API_BASE
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime
from hub.secrets.store import write_private_file

FEDERATION_SCOPE = "federation"
CA_CAPABILITY = "federation_ca_pem"
CLIENT_CERT_DAYS = 1
CALL_TIMEOUT = 10.0  # connect, each read, each write (the whole call: a setting)
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
MAX_CA_PEM = 64 * 1024

# Codes of refusals that come from what the child told us about itself, not from a call.
NO_FEDERATION_ENDPOINT = "NO_FEDERATION_ENDPOINT"
ENDPOINT_NOT_HTTPS = "PEER_ENDPOINT_NOT_HTTPS"
ENDPOINT_INVALID = "PEER_ENDPOINT_INVALID"
CA_INVALID = "PEER_CA_INVALID"
TLS_UNTRUSTED = "PEER_TLS_UNTRUSTED"
UNTRUSTED_CODES = (NO_FEDERATION_ENDPOINT, ENDPOINT_NOT_HTTPS, ENDPOINT_INVALID, CA_INVALID, TLS_UNTRUSTED)
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


@dataclass(frozen=True)
class ChildEndpoint:
    url: str
    ca_pem: str

    def __repr__(self) -> str:
        return f"ChildEndpoint({self.url!r})"


class CallFailed(Exception):
    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def check_endpoint_url(url: str) -> str | None:
    """Why `url` may not receive our calls (and the bearer), or None: https, a host, no userinfo."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return ENDPOINT_INVALID
    if parts.scheme.lower() != "https":
        return ENDPOINT_NOT_HTTPS
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return ENDPOINT_INVALID
    if parts.query or parts.fragment:
        return ENDPOINT_INVALID
    return None


def check_ca_pem(ca_pem: object) -> str | None:
    """Why `ca_pem` cannot be the CA we verify the child by, or None: PEM CA certificates only."""
    if not isinstance(ca_pem, str) or not ca_pem.strip() or len(ca_pem) > MAX_CA_PEM:
        return CA_INVALID
    try:
        certificates = x509.load_pem_x509_certificates(ca_pem.encode())
    except ValueError:
        return CA_INVALID
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return CA_INVALID
        if not constraints.ca:
            return CA_INVALID
    return None


def endpoint_of(peer: FederationPeer) -> ChildEndpoint:
    """Where the child's federation API listens and the CA its certificate comes from; CallFailed
    (with one of UNTRUSTED_CODES) when it did not say, or said something we will not call."""
    url = next(
        (
            e.get("url")
            for e in peer.endpoints or []
            if isinstance(e, dict) and e.get("scope") == FEDERATION_SCOPE
        ),
        None,
    )
    ca_pem = (peer.capabilities or {}).get(CA_CAPABILITY)
    if not url or ca_pem is None:
        raise CallFailed(None, NO_FEDERATION_ENDPOINT, f"{peer.name} has not told us its federation endpoint")
    if problem := check_endpoint_url(str(url)):
        raise CallFailed(None, problem, f"{peer.name} advertised a federation endpoint that is not https")
    if problem := check_ca_pem(ca_pem):
        raise CallFailed(None, problem, f"{peer.name} advertised a CA that is not a PEM CA certificate")
    return ChildEndpoint(url=str(url), ca_pem=str(ca_pem))


def _ssl_context(runtime: HubRuntime, *, peer_id: uuid.UUID, ca_pem: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = runtime.ca.sign_parent_client_cert(key.public_key(), peer_id=peer_id, days=CLIENT_CERT_DAYS)
    context = ssl.create_default_context(cadata=ca_pem)  # only the pinned CA, no system roots
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


def _untrusted_certificate(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _read_bounded(response: httpx.Response) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise CallFailed(response.status_code, "RESPONSE_TOO_LARGE", "the child's answer is too large")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise CallFailed(response.status_code, "RESPONSE_TOO_LARGE", "the child's answer is too large")
    return bytes(body)


async def _exchange(
    context: ssl.SSLContext,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any] | None,
    per_operation: float,
) -> tuple[int, bytes]:
    async with (
        httpx.AsyncClient(
            verify=context, timeout=per_operation, follow_redirects=False, trust_env=False
        ) as http,
        http.stream(method, url, json=body, headers=headers) as response,
    ):
        if response.is_redirect or 300 <= response.status_code < 400:
            raise CallFailed(response.status_code, "REDIRECT_REFUSED", "the child answered with a redirect")
        return response.status_code, await _read_bounded(response)


def _code(value: object, default: str) -> str:
    return value if isinstance(value, str) and _CODE.match(value) else default


async def call(
    runtime: HubRuntime,
    *,
    peer: FederationPeer,
    method: str,
    path: str,
    bearer: str | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One call to the child's federation API; the envelope's `data` (a dict), or CallFailed."""
    endpoint = endpoint_of(peer)
    headers = {"User-Agent": "powernode-hub/federation", "Accept": "application/json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    context = _ssl_context(runtime, peer_id=peer.id, ca_pem=endpoint.ca_pem)
    url = endpoint.url.rstrip("/") + API_BASE + path
    deadline = runtime.settings.federation.call_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            status, raw = await _exchange(
                context,
                method=method,
                url=url,
                headers=headers,
                body=body,
                per_operation=min(CALL_TIMEOUT, deadline),
            )
    except TimeoutError as e:
        message = f"no complete answer within {deadline:g}s calling {path}"
        raise CallFailed(None, "TIMEOUT", message) from e
    except httpx.HTTPError as e:
        if _untrusted_certificate(e):
            raise CallFailed(
                None, TLS_UNTRUSTED, f"{peer.name}'s certificate is not from the CA it enrolled with"
            ) from e
        raise CallFailed(None, "UNREACHABLE", f"{type(e).__name__} calling {path}") from e
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        if status >= 400:
            raise CallFailed(status, "HTTP_ERROR", f"the child answered {status}")
        raise CallFailed(status, "INVALID_RESPONSE", "the child's answer is not a JSON object")
    if status >= 400 or payload.get("success") is not True:
        raise CallFailed(status, _code(payload.get("code"), "HTTP_ERROR"), f"the child answered {status}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise CallFailed(status, "INVALID_RESPONSE", "the child's answer carries no data object")
    return data

"""A certificate that was replaced no longer identifies its peer, over the hub's real mTLS listener.

A child that renewed its certificate (a fresh key) gets a new one; from then on only that one
works: the first one (still signed by our CA, same CN) is refused with 401 on heartbeat, enroll,
peer, revoke and replication_credential, and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness.listeners import federation_listener, peer_client
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn

API = "/api/v1/system/federation_api"
ENROLL = {"platform_id": "p-1", "platform_url": "http://child.test"}


def csr_for(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def pem_of(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
async def replaced(client, runtime, settings, tmp_path: Path):
    """(old client, new client, peer id, operator headers): the first certificate was superseded
    by a renewal (a retried accept returns the same certificate, issue 11 #10)."""
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "autonomous_peer")
    key, renewed_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}
    first = (await client.post(ACCEPT, json={**body, "csr_pem": csr_for(key)})).json()["data"]
    async with federation_listener(settings, runtime) as url:
        old = peer_client(
            url,
            tmp_path / "old",
            cert_pem=first["client_cert_pem"],
            key_pem=pem_of(key),
            ca_pem=first["ca_chain_pem"],
        )
        renewed = await old.post(f"{API}/renew_certificate", json={"csr_pem": csr_for(renewed_key)})
        assert renewed.status_code == 200, renewed.text
        second = renewed.json()["data"]
        assert first["client_cert_fingerprint"] != second["client_cert_fingerprint"]
        new = peer_client(
            url,
            tmp_path / "new",
            cert_pem=second["client_cert_pem"],
            key_pem=pem_of(renewed_key),
            ca_pem=second["ca_chain_pem"],
        )
        async with new:
            yield old, new, data["child"]["id"], headers
        await old.aclose()


async def child_status(client, headers, peer_id) -> str:
    return (await client.get(f"{CHILDREN}/{peer_id}", headers=headers)).json()["data"]["child"]["status"]


async def test_a_heartbeat_signed_by_a_superseded_certificate_is_refused(replaced, client):
    old, new, peer_id, headers = replaced
    assert (await new.post(f"{API}/enroll", json=ENROLL)).status_code == 200

    refused = await old.post(f"{API}/heartbeat")
    still_enrolled = await child_status(client, headers, peer_id)
    accepted = await new.post(f"{API}/heartbeat")

    assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHORIZED"
    assert still_enrolled == "enrolled"  # the refused beat did not activate it
    assert accepted.status_code == 200 and accepted.json()["data"]["status"] == "active"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/enroll", ENROLL),
        ("GET", "/peer", None),
        ("POST", "/revoke", {"reason": "stolen"}),
        ("GET", "/replication_credential", None),
    ],
)
async def test_a_superseded_certificate_gets_401_and_changes_nothing(replaced, client, method, path, body):
    old, new, peer_id, headers = replaced

    response = await old.request(method, f"{API}{path}", json=body)

    assert response.status_code == 401, response.text
    assert response.json() == {
        "success": False,
        "error": "A valid peer client certificate is required",
        "code": "UNAUTHORIZED",
    }
    assert await child_status(client, headers, peer_id) == "accepted"
    assert (await new.post(f"{API}/enroll", json=ENROLL)).status_code == 200  # the new one still works

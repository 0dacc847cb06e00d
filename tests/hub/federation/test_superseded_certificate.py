"""A certificate that was replaced no longer identifies its peer, over the hub's real mTLS listener.

A child retrying accept after a lost response gets a new certificate for the same key; from then
on only that one works: the first one (still signed by our CA, same CN) is refused with 401 on
heartbeat, enroll, peer, revoke and replication_credential, and changes nothing.
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


@pytest.fixture
async def replaced(client, runtime, settings, tmp_path: Path):
    """(old client, new client, peer id, operator headers): the first certificate was superseded."""
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "autonomous_peer")
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}
    first = (await client.post(ACCEPT, json={**body, "csr_pem": csr_for(key)})).json()["data"]
    second = (await client.post(ACCEPT, json={**body, "csr_pem": csr_for(key)})).json()["data"]
    assert first["client_cert_fingerprint"] != second["client_cert_fingerprint"]
    async with federation_listener(settings, runtime) as url:
        old, new = (
            peer_client(
                url, tmp_path / name, cert_pem=d["client_cert_pem"], key_pem=key_pem, ca_pem=d["ca_chain_pem"]
            )
            for name, d in (("old", first), ("new", second))
        )
        async with old, new:
            yield old, new, data["child"]["id"], headers


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

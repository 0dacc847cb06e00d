"""Issue 11 #10: a key-bound accept retry is bounded. It works only until the token's expiry or a
short window after first use, returns the certificate already issued (never a new one), and
carries the grant's bearer only until the child confirmed the first answer by enrolling with its
certificate over the real mTLS listener."""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select, update

from hub.audit.models import AuditEvent
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from tests.harness.listeners import federation_listener, peer_client
from tests.hub.helpers import ACCEPT, operator_headers, spawn

ENROLL = "/api/v1/system/federation_api/enroll"
NOT_RECOGNIZED = "acceptance_token not recognized or expired"


def key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


async def first_accept(client, runtime, mode: str = "managed_child"):
    data = await spawn(client, await operator_headers(runtime), mode)
    key, csr = key_and_csr()
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": csr}
    response = await client.post(ACCEPT, json=body)
    assert response.status_code == 200, response.text
    return body, key, response.json()["data"]


async def move_token(runtime, public_id_of_peer: str, **values) -> None:
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(AcceptanceToken).where(AcceptanceToken.peer_id == public_id_of_peer).values(**values)
        )


async def test_a_retry_gets_the_certificate_already_issued_not_a_new_one(client, runtime):
    body, _, first = await first_accept(client, runtime)

    again = [(await client.post(ACCEPT, json=body)).json()["data"] for _ in range(3)]

    assert {a["client_cert_pem"] for a in again} == {first["client_cert_pem"]}
    assert {a["client_cert_fingerprint"] for a in again} == {first["client_cert_fingerprint"]}
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, first["peer_id"])
        retries = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "child.accept.retry")
        )
    assert peer.client_cert_fingerprint == first["client_cert_fingerprint"] and retries == 3


async def test_no_retry_after_the_window_since_first_use(client, runtime, settings):
    body, _, first = await first_accept(client, runtime)
    window = settings.federation.accept_retry_window_seconds
    await move_token(runtime, first["peer_id"], consumed_at=func.now() - timedelta(seconds=window + 1))

    late = await client.post(ACCEPT, json=body)

    assert late.status_code == 401 and late.json()["error"] == NOT_RECOGNIZED


async def test_no_retry_after_the_token_expired(client, runtime):
    body, _, first = await first_accept(client, runtime)
    await move_token(runtime, first["peer_id"], expires_at=func.now() - timedelta(seconds=1))

    late = await client.post(ACCEPT, json=body)

    assert late.status_code == 401 and late.json()["error"] == NOT_RECOGNIZED


async def test_the_bearer_is_redelivered_only_until_the_child_enrolled(client, runtime, settings, tmp_path):
    body, key, first = await first_accept(client, runtime)
    before = (await client.post(ACCEPT, json=body)).json()["data"]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    async with federation_listener(settings, runtime) as url:
        child = peer_client(
            url,
            tmp_path / "c",
            cert_pem=first["client_cert_pem"],
            key_pem=key_pem,
            ca_pem=first["ca_chain_pem"],
        )
        async with child:
            enrolled = await child.post(ENROLL, json={"platform_id": "c", "platform_url": "https://c.test"})

    after = await client.post(ACCEPT, json=body)

    bearer = first["grant"]["bearer_token"]
    assert bearer.startswith("pngb_") and before["grant"]["bearer_token"] == bearer
    assert enrolled.status_code == 200, enrolled.text
    assert after.status_code == 200
    grant = after.json()["data"]["grant"]
    assert grant["id"] == first["grant"]["id"] and grant.get("bearer_token") is None
    assert bearer not in after.text
    assert after.json()["data"]["client_cert_pem"] == first["client_cert_pem"]

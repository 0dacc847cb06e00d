"""Issue 11 #9: a child renews its client certificate over mTLS before it ends, and the old one
stops working. The parent is a real runtime behind its real federation TLS listener; the child
side runs the worker's own renewal against it, from files on disk, as a child hub does."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from hub.config import Settings
from hub.database import utcnow
from hub.federation import bootstrap, renewal
from hub.federation.peers.models import FederationPeer
from hub.secrets import ca as ca_service
from shared_contract.first_run import FirstRunResult
from tests.harness.listeners import federation_listener, peer_client
from tests.hub.helpers import ACCEPT, operator_headers, spawn

API = "/api/v1/system/federation_api"


def csr_for(key) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def pem_of(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    federation = settings.federation.model_copy(update={"peer_cert_ttl_days": 3})
    return settings.model_copy(update={"provisioner": "manual", "federation": federation})


@pytest.fixture
async def accepted(client, runtime):
    """(accept answer, the child's key, peer id): an autonomous child that accepted with a CSR."""
    data = await spawn(client, await operator_headers(runtime), "autonomous_peer")
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": csr_for(key)}
    response = await client.post(ACCEPT, json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"], key, data["child"]["id"]


async def fingerprint_on_parent(runtime, peer_id: str) -> str | None:
    async with runtime.sessionmaker() as session:
        return await session.scalar(
            select(FederationPeer.client_cert_fingerprint).where(FederationPeer.id == peer_id)
        )


async def test_renewal_over_mtls_moves_the_peer_to_the_new_certificate(settings, runtime, accepted, tmp_path):
    answer, key, peer_id = accepted
    new_key = ec.generate_private_key(ec.SECP384R1())
    async with federation_listener(settings, runtime) as url:
        old = peer_client(
            url,
            tmp_path / "old",
            cert_pem=answer["client_cert_pem"],
            key_pem=pem_of(key),
            ca_pem=answer["ca_chain_pem"],
        )
        async with old:
            weak = await old.post(
                f"{API}/renew_certificate",
                json={"csr_pem": csr_for(rsa.generate_private_key(public_exponent=65537, key_size=1024))},
            )
            still = await old.get(f"{API}/peer")
            renewed = await old.post(f"{API}/renew_certificate", json={"csr_pem": csr_for(new_key)})
            old_after = await old.get(f"{API}/peer")
            old_renews_again = await old.post(f"{API}/renew_certificate", json={"csr_pem": csr_for(new_key)})
        data = renewed.json()["data"]
        new = peer_client(
            url,
            tmp_path / "new",
            cert_pem=data["client_cert_pem"],
            key_pem=pem_of(new_key),
            ca_pem=data["ca_chain_pem"],
        )
        async with new:
            new_after = await new.get(f"{API}/peer")

    assert weak.status_code == 422 and weak.json()["code"] == "WEAK_KEY" and still.status_code == 200
    assert renewed.status_code == 200, renewed.text
    cert = x509.load_pem_x509_certificate(data["client_cert_pem"].encode())
    assert cert.subject.rfc4514_string() == f"CN=fed:{peer_id}"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert (
        timedelta(days=3)
        <= cert.not_valid_after_utc - cert.not_valid_before_utc
        <= timedelta(days=3, minutes=10)
    )
    assert await fingerprint_on_parent(runtime, peer_id) == data["client_cert_fingerprint"]
    assert old_after.status_code == 401 and old_renews_again.status_code == 401
    assert new_after.status_code == 200


async def become_that_child(runtime, answer, key, peer_id: str, parent_url: str, directory: Path):
    """Files and the parent row a child hub has after its first run (here in the same database)."""
    directory.mkdir(parents=True)
    cert_path, key_path, ca_path = directory / "client.crt", directory / "client.key", directory / "ca.crt"
    cert_path.write_text(answer["client_cert_pem"])
    key_path.write_text(pem_of(key))
    ca_path.write_text(answer["ca_chain_pem"])
    now = utcnow().isoformat()
    FirstRunResult(
        peer_id=peer_id,
        parent_peer_id=peer_id,
        parent_url=parent_url,
        spawn_mode="autonomous_peer",
        contract_version_agreed=1,
        accepted_at=now,
        client_cert_path=str(cert_path),
        client_key_path=str(key_path),
        ca_chain_path=str(ca_path),
        client_cert_fingerprint=answer["client_cert_fingerprint"],
        completed_at=now,
    ).write(bootstrap.first_run_result_path(runtime))
    row_id = await bootstrap.ingest_first_run(runtime)
    async with runtime.sessionmaker() as session:
        return await session.get(FederationPeer, row_id)


async def test_the_child_worker_renews_when_a_third_of_the_lifetime_is_left(
    settings, runtime, accepted, tmp_path
):
    answer, key, peer_id = accepted
    cert = x509.load_pem_x509_certificate(answer["client_cert_pem"].encode())
    async with federation_listener(settings, runtime) as url:
        row = await become_that_child(runtime, answer, key, peer_id, url, tmp_path / "agent")
        credentials = bootstrap.parent_credentials(row)
        assert credentials is not None

        early = await renewal.renew_if_due(runtime, row, credentials)
        renewed = await renewal.renew_if_due(
            runtime, row, credentials, now=cert.not_valid_after_utc - timedelta(hours=12)
        )
        async with runtime.sessionmaker() as session:
            row_after = await session.get(FederationPeer, row.id)
        beat = await bootstrap.sync_with_parent(runtime)  # the heartbeat goes out with the new one

    assert early == credentials  # two thirds left: nothing asked
    assert renewed.cert_path != credentials.cert_path and not credentials.key_path.exists()
    assert renewed.key_path.stat().st_mode & 0o077 == 0
    new_fp = ca_service.cert_fingerprint(x509.load_pem_x509_certificate(renewed.cert_path.read_bytes()))
    assert await fingerprint_on_parent(runtime, peer_id) == new_fp == row_after.client_cert_fingerprint
    assert row_after.metadata_["identity"]["client_cert_path"] == str(renewed.cert_path)
    assert beat == "active"

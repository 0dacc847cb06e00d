"""Issue 11 #9: the CA signs only sound keys, and what it issues is a client certificate only.

Accept runs against the real PostgreSQL and OpenBao of the session; the weak CSRs are real ones.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.config import Settings
from tests.hub.helpers import ACCEPT, operator_headers, spawn


def csr_for(key) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


WEAK = {
    "rsa-1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    "ec-p192": lambda: ec.generate_private_key(ec.SECP192R1()),
    "ec-secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "ec-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
}
SOUND = {
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    federation = settings.federation.model_copy(update={"peer_cert_ttl_days": 30})
    return settings.model_copy(update={"provisioner": "manual", "federation": federation})


@pytest.mark.parametrize("kind", sorted(WEAK))
async def test_a_weak_key_is_422_and_the_token_is_not_spent(client, runtime, kind):
    data = await spawn(client, await operator_headers(runtime), "autonomous_peer")
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}

    weak = await client.post(ACCEPT, json=body | {"csr_pem": csr_for(WEAK[kind]())})
    sound = await client.post(ACCEPT, json=body | {"csr_pem": csr_for(SOUND["ec-p256"]())})

    assert weak.status_code == 422, weak.text
    assert weak.json()["code"] == "WEAK_KEY" and "csr_pem" in weak.json()["error"]
    assert sound.status_code == 200 and sound.json()["data"]["status"] == "accepted"


@pytest.mark.parametrize("kind", sorted(SOUND))
async def test_a_sound_key_gets_a_client_only_certificate_of_the_configured_lifetime(client, runtime, kind):
    data = await spawn(client, await operator_headers(runtime), "autonomous_peer")
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}

    response = await client.post(ACCEPT, json=body | {"csr_pem": csr_for(SOUND[kind]())})

    assert response.status_code == 200, response.text
    cert = x509.load_pem_x509_certificate(response.json()["data"]["client_cert_pem"].encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert usage.value.key_encipherment is kind.startswith("rsa")
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.content_commitment)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=10)


async def test_the_certificate_a_parent_calls_its_child_with_is_client_only_names_the_child_and_lives_a_day(
    runtime,
):
    key = ec.generate_private_key(ec.SECP256R1())
    child_id = uuid.uuid4()

    cert = runtime.ca.sign_parent_client_cert(key.public_key(), peer_id=child_id)

    cert.verify_directly_issued_by(runtime.ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"fed-parent:{child_id}"
    assert cert.public_key() == key.public_key()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_encipherment or usage.value.key_cert_sign or usage.value.crl_sign)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=1) <= lifetime <= timedelta(days=1, minutes=10)

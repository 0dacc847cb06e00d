"""The child's key and the identity the parent signs for it."""

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from child_agent import identity
from child_agent.errors import ParentRefused
from child_agent.state import StatePaths, read_json
from shared_contract.accept import AcceptResponseData
from tests.child_agent.helpers import ThrowawayCA, certificate_builder, file_mode, payload

PEER_ID = "3b0c0000-0000-4000-8000-000000000003"


def _accepted(ca: ThrowawayCA, public_key: ec.EllipticCurvePublicKey) -> AcceptResponseData:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fed:{PEER_ID}")])
    cert = certificate_builder(name, ca.cert.subject, public_key).sign(ca.key, hashes.SHA256())
    return AcceptResponseData(
        peer_id=PEER_ID,
        status="accepted",
        contract_version_agreed=1,
        accepted_at="2030-01-01T00:00:00+00:00",
        handshake_at="2030-01-01T00:00:00+00:00",
        client_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_chain_pem=ca.pem,
    )


def test_the_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    key = identity.load_or_create_key(paths.key)
    paths.key.chmod(0o644)
    again = identity.load_or_create_key(paths.key)
    assert again.private_numbers() == key.private_numbers()
    assert file_mode(paths.key) == 0o600 and file_mode(paths.root) == 0o700
    csr = x509.load_pem_x509_csr(identity.build_csr(key, payload()).encode())
    assert csr.is_signature_valid and csr.public_key() == key.public_key()


def test_the_signed_identity_is_stored_with_its_fingerprint(tmp_path: Path) -> None:
    paths, ca = StatePaths(tmp_path / "state"), ThrowawayCA.create("parent CA")
    key = identity.load_or_create_key(paths.key)
    accepted = _accepted(ca, key.public_key())
    stored = identity.store(paths, key=key, accepted=accepted, payload=payload())
    assert stored.client_cert == (paths.cert, paths.key)
    der = x509.load_pem_x509_certificate(paths.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert stored.client_cert_fingerprint == hashlib.sha256(der).hexdigest()
    assert paths.ca.read_text() == ca.pem
    assert (file_mode(paths.cert), file_mode(paths.identity)) == (0o644, 0o600)
    assert read_json(paths.identity) == {
        "peer_id": PEER_ID,
        "parent_peer_id": payload().parent_peer_id,
        "parent_url": payload().parent_url,
        "contract_version_agreed": 1,
        "client_cert_fingerprint": stored.client_cert_fingerprint,
        "accepted_at": "2030-01-01T00:00:00+00:00",
    }


def test_a_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    paths, ca = StatePaths(tmp_path / "state"), ThrowawayCA.create("parent CA")
    key = identity.load_or_create_key(paths.key)
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ParentRefused, match="different key"):
        identity.store(paths, key=key, accepted=_accepted(ca, stranger), payload=payload())
    assert not paths.cert.exists()

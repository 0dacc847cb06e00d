"""The child's key pair and the identity the parent gave it at accept.

The private key is generated in the VM and never leaves it: only a CSR is sent. It is written once
(0600, atomically) and reused, so an agent that crashed after the parent consumed the token comes
back with the same key, which the parent recognises and answers again.
"""

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from child_agent.errors import AgentError, ParentRefused
from child_agent.state import StatePaths, write_json
from shared_contract._files import PRIVATE_FILE_MODE, write_private
from shared_contract.accept import AcceptResponseData
from shared_contract.payload import SpawnPayload

PUBLIC_FILE_MODE = 0o644


@dataclass(frozen=True)
class Identity:
    """Where the stored identity is; the certificate paths are None when the parent signed nothing."""

    peer_id: str
    client_cert_path: Path | None
    client_key_path: Path
    ca_chain_path: Path | None
    client_cert_fingerprint: str | None

    @property
    def client_cert(self) -> tuple[Path, Path] | None:
        """(certificate, key) for mutual TLS, if the parent issued a certificate."""
        return (self.client_cert_path, self.client_key_path) if self.client_cert_path else None


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Return the stored private key, creating it on the first call."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(path, pem)
        return key
    path.chmod(PRIVATE_FILE_MODE)  # repair a mode someone loosened; the key is what proves who we are
    try:
        stored = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as e:
        raise AgentError(f"the stored private key {path} is unreadable; remove it to start over") from e
    if not isinstance(stored, ec.EllipticCurvePrivateKey):
        raise AgentError(f"the stored private key {path} is not an EC key; remove it to start over")
    return stored


def build_csr(key: ec.EllipticCurvePrivateKey, payload: SpawnPayload) -> str:
    """A CSR for key; the parent names the certificate itself (CN fed:<peer_id>), so the CN is a hint."""
    name = payload.instance_uuid or payload.instance_name or "powernode-child"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def store(
    paths: StatePaths, *, key: ec.EllipticCurvePrivateKey, accepted: AcceptResponseData, payload: SpawnPayload
) -> Identity:
    """Write the certificate, the CA chain and identity.json; refuse a certificate for another key."""
    cert_path = fingerprint = None
    if accepted.client_cert_pem:
        fingerprint = _check_certificate(accepted.client_cert_pem, key)
        cert_path = _write_public(paths.cert, accepted.client_cert_pem)
    ca_pem = accepted.ca_chain_pem or payload.ca_pem
    ca_path = _write_public(paths.ca, ca_pem) if ca_pem else None
    write_json(
        paths.identity,
        {
            "peer_id": accepted.peer_id,
            "parent_peer_id": payload.parent_peer_id,
            "parent_url": payload.parent_url,
            "contract_version_agreed": accepted.contract_version_agreed,
            "client_cert_fingerprint": fingerprint,
            "accepted_at": accepted.accepted_at,
        },
    )
    return Identity(accepted.peer_id, cert_path, paths.key, ca_path, fingerprint)


def _check_certificate(cert_pem: str, key: ec.EllipticCurvePrivateKey) -> str:
    """Return the certificate's SHA-256 fingerprint (hex, as the parent records it)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as e:
        raise ParentRefused("the parent's client certificate is not a PEM certificate") from e
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ParentRefused("the parent signed a client certificate for a different key than ours")
    return cert.fingerprint(hashes.SHA256()).hex()


def _write_public(path: Path, pem: str) -> Path:
    write_private(path, pem.encode() if pem.endswith("\n") else (pem + "\n").encode())
    path.chmod(PUBLIC_FILE_MODE)  # certificates are public; a proxy or the hub may need to read them
    return path

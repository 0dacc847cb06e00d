"""The federation CA: signs child CSRs (CN `fed:<peer_id>`) and the hub's own TLS certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.exceptions import Unprocessable
from hub.secrets.store import (
    LocalEncryptedStore,
    SecretStore,
    SecretStoreUnavailable,
    exclusive_lock,
    write_private_file,
)

CA_SECRET_PATH = "powernode/federation_ca"
PEER_CN_PREFIX = "fed:"
# The certificate a parent issues itself to call a child it spawned. The child's own certificate
# names the same peer id (`fed:<id>`), so the parent's carries a prefix no CSR can obtain: a child
# presenting its own certificate to itself is never taken for its parent.
PARENT_CN_PREFIX = "fed-parent:"
DEFAULT_PEER_CERT_DAYS = 90
_CLOCK_SKEW = dt.timedelta(minutes=5)
MIN_RSA_BITS = 2048
SOUND_CURVES = (ec.SECP256R1, ec.SECP384R1)


class InvalidCSR(Unprocessable):
    code = "INVALID_CSR"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_fingerprint(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: what binds an accept to one child key."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def cert_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise InvalidCSR("csr_pem is not a PEM certificate signing request") from e
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as e:  # a key type or curve this library cannot even load
        raise InvalidCSR("csr_pem carries a key of an unsupported type") from e
    check_key(public_key)
    if not csr.is_signature_valid:
        raise InvalidCSR("csr_pem signature does not verify")
    return csr


def check_key(public_key: object) -> None:
    """Only sound keys get a certificate: RSA >= 2048 bits, EC P-256/P-384, Ed25519 (else 422)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidCSR(
                f"csr_pem key is RSA-{public_key.key_size}: RSA keys must have at least {MIN_RSA_BITS} bits",
                code="WEAK_KEY",
            )
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, SOUND_CURVES):
            raise InvalidCSR(
                f"csr_pem key is on curve {public_key.curve.name}: only P-256 and P-384 are accepted",
                code="WEAK_KEY",
            )
        return
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    raise InvalidCSR(
        "csr_pem key type is not accepted: use RSA (2048+), EC P-256/P-384 or Ed25519", code="WEAK_KEY"
    )


@dataclass
class FederationCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def __repr__(self) -> str:
        return f"FederationCA(subject={self.cert.subject.rfc4514_string()!r})"

    @functools.cached_property
    def chain_pem(self) -> str:
        """The CA certificate as PEM (encoded once: every accept answers it)."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign_peer_csr(
        self, csr: x509.CertificateSigningRequest, *, peer_id: uuid.UUID, days: int = DEFAULT_PEER_CERT_DAYS
    ) -> x509.Certificate:
        """A client certificate whose CN names the peer; the CSR's own subject is ignored.

        CA:FALSE, keyUsage digitalSignature (+keyEncipherment for RSA), EKU clientAuth only.
        """
        public_key = csr.public_key()
        check_key(public_key)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{PEER_CN_PREFIX}{peer_id}")])
        return self._sign(
            name,
            public_key,
            days=days,
            usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
            key_usage=_client_key_usage(public_key),
        )

    def sign_parent_client_cert(
        self, public_key: ec.EllipticCurvePublicKey, *, peer_id: uuid.UUID, days: int = 1
    ) -> x509.Certificate:
        """The certificate this hub calls a child it spawned with: CN `fed-parent:<our id of it>`."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{PARENT_CN_PREFIX}{peer_id}")])
        return self._sign(
            name,
            public_key,
            days=days,
            usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
            key_usage=_client_key_usage(public_key),
        )

    def issue_server_cert(self, hosts: list[str], *, days: int = 365) -> tuple[str, str]:
        """(cert PEM, key PEM) for the hub's own TLS listener."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        cert = self._sign(
            name, key.public_key(), days=days, usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()

    def _sign(
        self,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        *,
        days: int,
        usage: list[x509.ObjectIdentifier],
        sans: list[x509.GeneralName] | None = None,
        key_usage: x509.KeyUsage | None = None,
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if key_usage is not None:
            builder = builder.add_extension(key_usage, critical=True)
        return builder.sign(self.key, hashes.SHA256())


def _client_key_usage(public_key: object) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _new_ca(common_name: str) -> FederationCA:
    key = ec.generate_private_key(ec.SECP256R1())
    # Every hub's CA has the same CN; a unique serialNumber keeps their subjects apart, so a
    # child trusting its own CA and its parent's finds the right issuer (OpenSSL looks it up by name).
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, uuid.uuid4().hex),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return FederationCA(key=key, cert=cert)


def _pems(ca: FederationCA) -> tuple[bytes, bytes]:
    key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, ca.cert.public_bytes(serialization.Encoding.PEM)


def _from_pems(key_pem: bytes, cert_pem: bytes) -> FederationCA:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the federation CA key must be an EC key")
    return FederationCA(key=key, cert=x509.load_pem_x509_certificate(cert_pem))


def _load_or_create_files(directory: Path, common_name: str) -> FederationCA:
    key_file, cert_file = directory / "ca.key", directory / "ca.crt"
    # Processes sharing a data dir may all start at once: one creates, the others wait and load.
    with exclusive_lock(directory / ".lock"):
        if key_file.exists() and cert_file.exists():
            return _from_pems(key_file.read_bytes(), cert_file.read_bytes())
        ca = _new_ca(common_name)
        key_pem, cert_pem = _pems(ca)
        write_private_file(key_file, key_pem)
        write_private_file(cert_file, cert_pem)
        return ca


async def load_or_create(
    *, data_dir: Path, store: SecretStore, common_name: str = "Powernode federation CA"
) -> FederationCA:
    """Created on first start: key file 0600 in the data dir, or in Vault when Vault is the store."""
    if isinstance(store, LocalEncryptedStore):
        return await asyncio.to_thread(_load_or_create_files, data_dir / "ca", common_name)
    stored = await store.get(CA_SECRET_PATH)
    if not stored:
        ca = _new_ca(common_name)
        key_pem, cert_pem = _pems(ca)
        # Check-and-set: of hubs starting at once, one CA wins and the others adopt it.
        if await store.create(CA_SECRET_PATH, {"key_pem": key_pem.decode(), "cert_pem": cert_pem.decode()}):
            return ca
        stored = await store.get(CA_SECRET_PATH)
        if not stored:
            raise SecretStoreUnavailable(
                f"the federation CA at {CA_SECRET_PATH} vanished while being created"
            )
    return _from_pems(stored["key_pem"].encode(), stored["cert_pem"].encode())

"""The child side of certificate renewal: before its client certificate ends, renew it over mTLS.

Each heartbeat tick looks at the certificate this node calls its parent with; once less than a
third of its lifetime is left, the node makes a fresh key, asks the parent for a certificate over
`POST renew_certificate` (authenticated by the current one), writes the new key and certificate
next to the old ones (0600) and switches its parent row to them in one UPDATE. From then on the
parent refuses the old certificate. A failed renewal is logged and tried again next tick.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from sqlalchemy import type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB

from hub.database import utcnow
from hub.federation.peering.client import PeerCallFailed, PeerClient, PeerCredentials
from hub.federation.peers.models import FederationPeer
from hub.runtime import HubRuntime
from hub.secrets import ca as ca_service
from hub.secrets.store import write_private_file
from shared_contract.renew import RenewRequest, RenewResponseData

log = logging.getLogger(__name__)
RENEW_PATH = "/renew_certificate"
RENEW_WHEN_LEFT = 1 / 3  # of the certificate's lifetime


def due(cert_path: Path, *, now: datetime | None = None) -> bool:
    """Whether the certificate at `cert_path` has less than a third of its lifetime left."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False  # nothing we can renew with; the heartbeat will say what is wrong
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - (now or utcnow()) < lifetime * RENEW_WHEN_LEFT


def _issued_by_our_parent(cert: x509.Certificate, ca_path: Path) -> bool:
    try:
        cas = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except (OSError, ValueError):
        return False
    for ca in cas:
        with contextlib.suppress(ValueError, TypeError, InvalidSignature):
            cert.verify_directly_issued_by(ca)
            return True
    return False


async def renew_if_due(
    runtime: HubRuntime, parent: FederationPeer, credentials: PeerCredentials, *, now: datetime | None = None
) -> PeerCredentials:
    """The credentials to call the parent with: renewed first when due, else the ones given."""
    if not due(credentials.cert_path, now=now):
        return credentials
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
        .sign(key, hashes.SHA256())
    )
    request = RenewRequest(csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode())
    try:
        async with PeerClient(credentials) as client:
            answer = RenewResponseData.model_validate(await client.call("POST", RENEW_PATH, request))
        cert = x509.load_pem_x509_certificate(answer.client_cert_pem.encode())
    except PeerCallFailed as e:
        log.warning("certificate renewal refused by the parent: %s %s", e.status or "", e.message)
        return credentials
    except (ValidationError, ValueError):
        log.warning("certificate renewal: the parent's answer is not a certificate")
        return credentials
    ours = ca_service.key_fingerprint(key.public_key())
    if ca_service.key_fingerprint(cert.public_key()) != ours or not _issued_by_our_parent(
        cert, credentials.ca_path
    ):
        log.warning("certificate renewal: the parent's certificate is not for our key or not from its CA")
        return credentials
    fingerprint = ca_service.cert_fingerprint(cert)
    directory = credentials.cert_path.parent
    cert_path, key_path = (
        directory / f"client-{fingerprint[:16]}.crt",
        directory / f"client-{fingerprint[:16]}.key",
    )
    write_private_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    identity = dict((parent.metadata_ or {}).get("identity") or {})
    identity.update(client_cert_path=str(cert_path), client_key_path=str(key_path))
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(FederationPeer)
            .where(FederationPeer.id == parent.id)
            .values(
                client_cert_fingerprint=fingerprint,
                updated_at=utcnow(),
                metadata_=FederationPeer.metadata_.op("||", return_type=JSONB)(
                    type_coerce({"identity": identity}, JSONB)
                ),
            )
        )
    for old in (credentials.cert_path, credentials.key_path):  # that certificate no longer works
        with contextlib.suppress(OSError):
            old.unlink()
    log.info("client certificate renewed: valid until %s", answer.not_after)
    return PeerCredentials(credentials.url, cert_path, key_path, credentials.ca_path)

"""Who a federation call is from (hub/federation/peering/auth.identify), in the hub's own process:
its client certificate, or the one header a trusted proxy forwards — sent once, and not empty."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.exceptions import HubError, Unauthorized
from hub.federation.peering.auth import identify
from tests.hub.helpers import make_csr

HEADER = "X-Forwarded-Tls-Client-Cert-Info"
PROXY = "10.1.2.3"


def _identify(*, tls_chain=None, headers=(), socket_peer=PROXY):
    return identify(
        tls_chain=tls_chain,
        headers=list(headers),
        socket_peer=socket_peer,
        trusted_proxies=[f"{PROXY}/32"],
        cert_header=HEADER,
    )


def _stranger_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone-else")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_a_peer_certificate_names_its_peer_and_any_other_is_refused(runtime):
    peer_id = uuid.uuid4()
    _, csr = make_csr()
    cert = runtime.ca.sign_peer_csr(x509.load_pem_x509_csr(csr.encode()), peer_id=peer_id, days=1)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    identity = _identify(tls_chain=[pem], socket_peer="192.0.2.9")

    assert identity.peer_id == peer_id and identity.cert_fingerprint is not None
    with pytest.raises(Unauthorized):
        _identify(tls_chain=[_stranger_pem()], socket_peer="192.0.2.9")


def test_the_trusted_proxys_header_names_the_peer_once_and_not_empty():
    peer_id = uuid.uuid4()
    value = f'Subject="CN=fed:{peer_id}"'

    identity = _identify(headers=[(HEADER.lower(), value)])
    assert identity.peer_id == peer_id and identity.cert_fingerprint is None

    for headers in ([(HEADER.lower(), value)] * 2, [(HEADER.lower(), " ")]):
        with pytest.raises(HubError) as refused:
            _identify(headers=headers)
        assert refused.value.code == "AMBIGUOUS_CLIENT_CERT"
        assert refused.value.message == f"The {HEADER} header must be sent once and not empty"
    with pytest.raises(Unauthorized):  # the same header from anyone else is no identity at all
        _identify(headers=[(HEADER.lower(), value)], socket_peer="192.0.2.9")
    with pytest.raises(Unauthorized):
        _identify(headers=[])

"""``POST /renew_certificate`` (ours): a peer renews its client certificate over mTLS, before it ends.

Authenticated by the current certificate; the new one is for the key in ``csr_pem`` (a fresh key
is expected). From the answer on, only the new certificate identifies the peer.
"""

from pydantic import Field

from shared_contract._base import MAX_CSR, IsoTimestamp, PemStr, ShortStr, WireModel


class RenewRequest(WireModel):
    """The CSR for the certificate that replaces the one the call is made with."""

    csr_pem: str = Field(max_length=MAX_CSR)


class RenewResponseData(WireModel):
    """The renew response ``data``: the new certificate, the CA chain, and until when it is valid."""

    client_cert_pem: PemStr
    ca_chain_pem: PemStr
    client_cert_fingerprint: ShortStr
    not_after: IsoTimestamp

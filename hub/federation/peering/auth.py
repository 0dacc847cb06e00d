"""Who is calling the federation API: a peer identified by its client certificate (DESIGN §5).

Either the hub terminated TLS itself (the certificate is in the ASGI TLS extension and must be
the one we signed for that peer), or a trusted proxy did and forwards the subject CN in one header
(POWERNODE_FEDERATION_CLIENT_CERT_HEADER), which is believed only when the TCP connection itself
comes from a configured proxy address (never the X-Forwarded-For address). Any other client-cert
header is ignored; the configured one sent twice, or empty, is refused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import unquote_plus

from cryptography import x509
from cryptography.x509.oid import NameOID

from hub.edge import is_trusted_proxy
from hub.exceptions import HubError, Unauthorized
from hub.observability.context import binds_peer
from hub.secrets.ca import PARENT_CN_PREFIX, PEER_CN_PREFIX, cert_fingerprint

# Headers TLS proxies commonly use; only the configured one is read, the others only diagnosed.
KNOWN_CERT_HEADERS = (
    "x-client-s-dn-cn",
    "x-forwarded-tls-client-cert-subject",
    "x-forwarded-tls-client-cert-info",
)
_CN_IN_SUBJECT = re.compile(r'(?:^|[,;/"\s])CN=([^,;/"]+)')


class PeerIdentity(NamedTuple):  # a tuple: built on every federation call, cheaper than a dataclass
    peer_id: uuid.UUID
    cert_fingerprint: str | None  # None when a trusted proxy vouched for the CN
    # CN `fed-parent:<id>`: the parent that spawned us, calling with the certificate it issues
    # itself. Only such a certificate is ever taken for our parent (never our own `fed:<id>` one).
    as_parent: bool = False

    def __repr__(self) -> str:
        return f"PeerIdentity({self.peer_id}{', parent' if self.as_parent else ''})"


__all__ = ["PeerIdentity", "from_certificate", "identify", "is_trusted_proxy"]


def _first_subject(value: str) -> str:
    """Traefik's cert-info header lists one `Subject="…"` per certificate, the client's own first."""
    start = value.find('Subject="')
    if start < 0:
        return value
    end = value.find('"', start + 9)
    return value[start + 9 : end if end > 0 else None]


def _prefix(cn: str) -> str | None:
    if cn.startswith(PEER_CN_PREFIX):
        return PEER_CN_PREFIX
    if cn.startswith(PARENT_CN_PREFIX):
        return PARENT_CN_PREFIX
    return None


def _identity_from_cn(cn: str, fingerprint: str | None = None) -> PeerIdentity | None:
    cn = cn.strip()
    prefix = _prefix(cn)
    if prefix is None:
        match = _CN_IN_SUBJECT.search(cn)
        if match is None:
            return None
        cn = match.group(1).strip()
        prefix = _prefix(cn)
        if prefix is None:
            return None
    try:
        peer_id = uuid.UUID(cn[len(prefix) :])
    except ValueError:
        return None
    return PeerIdentity(peer_id, fingerprint, as_parent=prefix == PARENT_CN_PREFIX)


def from_certificate(pem: str) -> PeerIdentity | None:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return _identity_from_cn(str(names[0].value), cert_fingerprint(cert)) if names else None


def _identify(
    *,
    tls_chain: list[str] | None,
    headers: Iterable[tuple[str, str]],
    socket_peer: str | None,
    trusted_proxies: Iterable[str],
    cert_header: str,
) -> PeerIdentity:
    """The calling peer, or 401: no certificate, a certificate not for a peer, an untrusted header.
    `headers` are all of the request's (name lower-cased), repeats included; `socket_peer` is the
    address of the TCP connection."""
    if tls_chain:
        identity = from_certificate(tls_chain[0])
        if identity is not None:
            return identity
    elif is_trusted_proxy(socket_peer, trusted_proxies):
        wanted = cert_header.lower()
        values = [value for name, value in headers if name == wanted]
        if len(values) > 1 or (values and not values[0].strip()):
            raise HubError(
                f"The {cert_header} header must be sent once and not empty", code="AMBIGUOUS_CLIENT_CERT"
            )
        identity = _identity_from_cn(_first_subject(unquote_plus(values[0]))) if values else None
        if identity is not None:
            return identity
    raise Unauthorized("A valid peer client certificate is required")


# Not decorated with `@`: mutmut mutates only undecorated functions, and this is the check it most
# needs to reach (make mutate).
identify = binds_peer(_identify)


def refusal_cause(
    *,
    tls_chain: list[str] | None,
    headers: Iterable[tuple[str, str]],
    socket_peer: str | None,
    trusted_proxies: Iterable[str],
    cert_header: str,
    scheme: str,
) -> str:
    """Why a call was refused, in words an operator can act on (for findings, never for the caller)."""
    wanted = cert_header.lower()
    forwarded = sorted({name for name, value in headers if value} & {wanted, *KNOWN_CERT_HEADERS})
    if tls_chain:
        if from_certificate(tls_chain[0]) is None:
            return "the client certificate presented is not one of this hub's peer certificates"
        return "the client certificate presented does not match this peer (replaced, or the peer moved on)"
    if forwarded and not is_trusted_proxy(socket_peer, trusted_proxies):
        return (
            f"client-certificate headers came from {socket_peer}, which is not in "
            "POWERNODE_FEDERATION_TRUSTED_PROXIES"
        )
    if forwarded and wanted not in forwarded:
        return (
            f"the proxy forwards {', '.join(forwarded)}, but only {cert_header} "
            "(POWERNODE_FEDERATION_CLIENT_CERT_HEADER) is read"
        )
    if forwarded:
        return "the forwarded client-certificate subject names no peer of this hub"
    if scheme == "http":
        return (
            "they arrive without a client certificate, over plain http (the child calls the API URL, "
            "not the federation listener)"
        )
    return "they arrive without a client certificate"

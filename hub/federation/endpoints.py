"""Which of this hub's URLs a child uses for what, and the check of the parent_url a spawn names.

`serve` listens twice: the API (plain http: the operator API, the CLI, and accept, where the token
is the credential) and the federation TLS listener (where a peer presents its client certificate
for enroll, heartbeats and everything after). A child may be given either as its parent_url; the
accept answer's `federation_url` tells it where to present its certificate. Behind a TLS proxy
(`POWERNODE_PUBLIC_URL` https) the public URL is both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hub.config import Settings
from hub.exceptions import Unprocessable

EXTRAS_KEY = "listeners"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Listeners:
    """What `serve` bound: the API's and the federation listener's ports and URLs."""

    api_url: str
    federation_url: str
    # POWERNODE_PUBLIC_URL was set: children may reach us through a proxy or a port mapping.
    public_url_configured: bool

    @property
    def api_port(self) -> int:
        return _port(self.api_url)

    @property
    def federation_port(self) -> int:
        return _port(self.federation_url)


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)


def listeners(extras: dict[str, Any]) -> Listeners | None:
    found = extras.get(EXTRAS_KEY)
    return found if isinstance(found, Listeners) else None


def _host_of(authority: str | None) -> str | None:
    if not authority:
        return None
    try:
        host = urlsplit("//" + authority).hostname
    except ValueError:
        return None
    return host or None


def federation_url(settings: Settings, extras: dict[str, Any], *, request_host: str | None) -> str | None:
    """Where a peer presents its client certificate, as the accept answer tells a child.

    POWERNODE_FEDERATION_URL if set; else an https POWERNODE_PUBLIC_URL (a TLS proxy forwards the
    certificate's CN); else `serve`'s federation listener on the host the caller reached us by.
    None when none is known (the child then keeps using its parent_url).
    """
    if settings.federation_url:
        return settings.federation_url
    public = settings.public_url or ""
    if public.lower().startswith("https://"):
        return public.rstrip("/")
    bound = listeners(extras)
    if bound is None:
        return None
    host = _host_of(request_host) or urlsplit(bound.federation_url).hostname or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{bound.federation_port}"


def check_parent_url(settings: Settings, extras: dict[str, Any], parent_url: str) -> None:
    """422 for a parent_url that reaches none of our listeners, when we can tell.

    We can tell only under `serve` with nothing configured (no POWERNODE_PUBLIC_URL or
    POWERNODE_FEDERATION_URL): then a child can reach us only on the API or the federation
    listener's port, each with its own scheme. Behind a proxy or a port mapping any URL may be right.
    """
    bound = listeners(extras)
    if bound is None or bound.public_url_configured or settings.federation_url:
        return
    parts = urlsplit(parent_url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    use = f"use {bound.api_url} (the API) or {bound.federation_url} (the federation listener)"
    if port == bound.api_port and parts.scheme != "http":
        raise Unprocessable(
            f"parent_url {parent_url} names the API listener with {parts.scheme}, but it speaks plain "
            f"http: {use}",
            code="PARENT_URL_UNREACHABLE",
        )
    if port == bound.federation_port and parts.scheme != "https":
        raise Unprocessable(
            f"parent_url {parent_url} names the federation listener with {parts.scheme}, but it speaks "
            f"https: {use}",
            code="PARENT_URL_UNREACHABLE",
        )
    if port not in (bound.api_port, bound.federation_port):
        raise Unprocessable(
            f"parent_url {parent_url} reaches none of this hub's listeners: {use}; if children reach "
            "this hub through a proxy or a port mapping, set POWERNODE_PUBLIC_URL",
            code="PARENT_URL_UNREACHABLE",
        )

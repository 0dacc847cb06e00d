"""The federation listener: HTTPS with a certificate from our federation CA, client certs optional.

Children pin our CA (the payload's `ca_pem`), so this listener's certificate must come from it.
A client certificate is requested but not required: accept has none yet; enroll, heartbeat and
the rest are refused by the app without one (DESIGN §5). The files also serve a TLS proxy.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from hub import edge
from hub.config import Settings
from hub.embedded.process import write_private
from hub.federation import member
from hub.provisioning.guest import PARENT_HOST
from hub.runtime import HubRuntime
from hub.tls import ClientCertHttpToolsProtocol


def write_tls_files(runtime: HubRuntime, settings: Settings) -> tuple[Path, Path, Path]:
    """ca.crt (the client CAs we accept), server.crt and server.key (0600) in `<data_dir>/tls`,
    fresh on every start."""
    directory = settings.data_dir / "tls"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The development QEMU guest reaches our loopback at guest.PARENT_HOST (a user-network forward).
    hosts = ["127.0.0.1", "localhost", "::1", PARENT_HOST]
    public = urlsplit(settings.public_url or "").hostname
    if public and public not in hosts:
        hosts.insert(0, public)
    cert_pem, key_pem = runtime.ca.issue_server_cert(hosts, days=90)
    ca_file, cert_file, key_file = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    # A spawned child also trusts its parent's CA: the parent calls it with a certificate from it.
    ca_file.write_text(runtime.ca.chain_pem + member.parent_ca_pem(settings))
    cert_file.write_text(cert_pem + runtime.ca.chain_pem)
    write_private(key_file, key_pem)
    return ca_file, cert_file, key_file


def uvicorn_config(app: Any, runtime: HubRuntime, settings: Settings) -> uvicorn.Config:
    ca_file, cert_file, key_file = write_tls_files(runtime, settings)
    return uvicorn.Config(
        edge.federation_listener(app),  # the federation API only (hub/edge.py)
        log_level=settings.log_level.lower(),
        lifespan="off",
        http=ClientCertHttpToolsProtocol,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        ssl_ca_certs=str(ca_file),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
        access_log=False,  # hub/edge.py writes the access line
    )

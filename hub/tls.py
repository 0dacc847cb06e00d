"""The hub's own TLS listener, exposing the client certificate to the app (ASGI TLS extension).

uvicorn verifies the client certificate against the federation CA but does not hand it to the
app; this protocol reads it from the TLS transport once per connection and puts it in
`scope["extensions"]["tls"]["client_cert_chain"]`, as the ASGI TLS extension specifies.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _wrap(app: Any, chain: list[str]) -> Any:
    async def with_client_cert(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": chain}
        await app(scope, receive, send)

    return with_client_cert


class ClientCertHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = _wrap(self.app, [ssl.DER_cert_to_PEM_cert(der)])

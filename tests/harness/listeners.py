"""The hub served in-process on free ports, on the test's own runtime: real sockets for tests.

`federation_listener(settings, runtime)` yields the https URL of the federation TLS listener (real
mTLS); `api_listener(settings, runtime)` the http URL of the operator API, for the real CLI in a
subprocess; `peer_client(url, dir, cert, key, ca)` is an httpx client that presents a client
certificate and pins the federation CA.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import uvicorn

from hub.config import Settings
from hub.main import create_app
from hub.runtime import HubRuntime
from hub.supervision import federation_tls
from hub.supervision.serve import bind_listener


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test runner keeps its own SIGINT
        yield


@asynccontextmanager
async def federation_listener(settings: Settings, runtime: HubRuntime) -> AsyncIterator[str]:
    config = federation_tls.uvicorn_config(create_app(settings, runtime), runtime, settings)
    async with _serving(config, "https") as url:
        yield url


@asynccontextmanager
async def api_listener(settings: Settings, runtime: HubRuntime) -> AsyncIterator[str]:
    config = uvicorn.Config(create_app(settings, runtime), lifespan="off", log_level="warning")
    async with _serving(config, "http") as url:
        yield url


@asynccontextmanager
async def _serving(config: uvicorn.Config, scheme: str) -> AsyncIterator[str]:
    sock = bind_listener("127.0.0.1", 0)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def peer_client(url: str, directory: Path, *, cert_pem: str, key_pem: str, ca_pem: str) -> httpx.AsyncClient:
    """A client presenting `cert_pem` (the files go to `directory`), trusting only `ca_pem`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "client.crt", directory / "client.key"
    cert_file.write_text(cert_pem)
    key_file.write_text(key_pem)
    key_file.chmod(0o600)
    context = ssl.create_default_context(cadata=ca_pem)
    context.load_cert_chain(cert_file, key_file)
    return httpx.AsyncClient(base_url=url, verify=context, timeout=30)

"""One real `powernode-hub serve` for the edge attacks (issue 11): the session's PostgreSQL, Redis
and OpenBao, a trusted proxy at 127.0.0.2 (tests attack from 127.0.0.1), /metrics behind a token,
no docs; and a child that really accepted and enrolled over mTLS."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from hub.embedded.process import free_port
from hub.localhub import hub_command, hub_env
from tests.harness.databases import DatabaseFactory
from tests.harness.serve import ServeProcess
from tests.hub.helpers import ACCEPT, SPAWN, make_csr

PROXY = "127.0.0.2"
FEDERATION_API = "/api/v1/system/federation_api"


@dataclass
class EdgeHub:
    serve: ServeProcess
    url: str
    federation_url: str
    ca_file: Path
    env: dict[str, str]
    database_url: str
    operator_token: str = ""
    viewer_token: str = ""

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """`powernode-hub <args>` as an operator would run it against this hub."""
        env = hub_env(self.env | {"POWERNODE_URL": self.url, "POWERNODE_TOKEN": token or self.operator_token})
        return subprocess.run(
            [*hub_command(), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def operator(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}"}

    def http(self, source: str = "127.0.0.1") -> httpx.Client:
        """A client whose TCP connections come from `source` (127.0.0.2 is the trusted proxy)."""
        return httpx.Client(
            base_url=self.url, timeout=60, transport=httpx.HTTPTransport(local_address=source)
        )

    def mtls(self, cert: tuple[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.federation_url, timeout=60, verify=_context(self.ca_file, cert))


def _context(ca_file: Path, cert: tuple[str, str] | None) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


@pytest.fixture(scope="package")
async def edge_database(databases: DatabaseFactory, migrated_template: str) -> AsyncIterator[str]:
    name = databases.new_name("edge")
    yield await databases.create(name, template=migrated_template)
    await databases.drop(name)


@pytest.fixture(scope="package")
async def edge_redis(redis_server: Any) -> AsyncIterator[str]:
    url = redis_server.url(db=0)  # the per-test fixture rotates through 1-15
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    try:
        yield url
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture(scope="package")
def edge_hub(edge_database: str, edge_redis: str, openbao: Any, harness_dir: Path) -> Iterator[EdgeHub]:
    base = harness_dir / f"edge-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    data_dir = base / "data"
    env = {
        "DATABASE_URL": edge_database,
        "REDIS_URL": edge_redis,
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.token,
        "POWERNODE_DATA_DIR": str(data_dir),
        "POWERNODE_PROVISIONER": "manual",
        "POWERNODE_FEDERATION_TRUSTED_PROXIES": f'["{PROXY}/32"]',
        "POWERNODE_METRICS_REQUIRE_TOKEN": "true",
        "POWERNODE_API_DOCS": "false",
    }
    serve = ServeProcess(data_dir, free_port(), env=env).start()
    try:
        lines = [serve.read_line(120), serve.read_line(60)]
        url = lines[0].split(": ", 1)[1]
        federation_url = lines[1].split(": ", 1)[1]
        hub = EdgeHub(serve, url, federation_url, data_dir / "tls" / "ca.crt", env, edge_database)
        hub.operator_token = _mint(hub, "edge-operator", "operator")
        hub.viewer_token = _mint(hub, "edge-viewer", "viewer")
        yield hub
    finally:
        serve.kill()


def _mint(hub: EdgeHub, name: str, role: str) -> str:
    done = subprocess.run(
        [*hub_command(), "operator-token", "create", "--name", name, "--role", role],
        env=hub_env(hub.env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass(frozen=True)
class Peer:
    id: str
    cert: tuple[str, str]  # (certificate file, key file)


@pytest.fixture(scope="package")
def enrolled_peer(edge_hub: EdgeHub, harness_dir: Path) -> Peer:
    """A child spawned through the API that accepted with its CSR and enrolled with its certificate,
    both over the federation listener: a real peer whose identity the attacks try to borrow."""
    return enroll_child(edge_hub, harness_dir, name="edge-child")


def enroll_child(hub: EdgeHub, directory: Path, *, name: str) -> Peer:
    with hub.http() as http:
        spawned = http.post(
            SPAWN,
            headers=hub.operator(),
            json={
                "spawn_mode": "managed_child",
                "name": name,
                "parent_url": hub.federation_url,
                "spawn_target": {"template_id": "powernode-hub", "manual_attach": True},
            },
        )
    assert spawned.status_code == 201, spawned.text
    key, csr = make_csr()
    token = spawned.json()["data"]["acceptance_token"]
    with hub.mtls() as http:
        accepted = http.post(ACCEPT, json={"acceptance_token": token, "contract_version": 1, "csr_pem": csr})
    assert accepted.status_code == 200, accepted.text
    data = accepted.json()["data"]
    cert_file, key_file = directory / f"{name}-{data['peer_id']}.crt", directory / f"{name}.key"
    cert_file.write_text(data["client_cert_pem"])
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    peer = Peer(data["peer_id"], (str(cert_file), str(key_file)))
    with hub.mtls(peer.cert) as http:
        enrolled = http.post(
            f"{FEDERATION_API}/enroll",
            json={
                "platform_id": f"platform-{name}",
                "platform_url": "https://child.example.test",
                "name": name,
            },
        )
    assert enrolled.status_code == 200, enrolled.text
    return peer

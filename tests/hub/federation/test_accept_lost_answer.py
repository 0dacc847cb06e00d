"""Issue 12 #5: the accept's answer is lost on the wire (a proxy drops the connection once the hub
answers); the child still ends up enrolled over the hub's real mTLS listener.

With a key (our agent): the retry gets a certificate the parent recognises. Without one (the
original agent): the token is spent and a retry is refused; the sweep says so, and the operator's
rotate_token lets the child start over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.config import FederationSettings, Settings
from hub.federation.findings.jobs import federation_findings_sweep
from hub.federation.peers.models import FederationPeer
from tests.harness.listeners import api_listener, federation_listener, peer_client
from tests.hub.federation.test_superseded_certificate import ENROLL, csr_for
from tests.hub.helpers import CHILDREN, operator_headers, spawn

API = "/api/v1/system/federation_api"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"federation": FederationSettings(stuck_seconds=0.1)})


@pytest.fixture
async def listener(settings, runtime) -> AsyncIterator[str]:
    async with federation_listener(settings, runtime) as url:
        yield url


@pytest.fixture
async def api(settings, runtime) -> AsyncIterator[str]:
    """The hub's plain HTTP API served in-process (behind a TLS proxy in production)."""
    async with api_listener(settings, runtime) as url:
        yield url


@pytest.fixture
async def answer_dropping_proxy(api: str) -> AsyncIterator[str]:
    """A TCP relay to the API that closes the client's connection at the first byte of the hub's
    answer: the request arrives whole and is handled, the answer never arrives."""
    upstream = urlsplit(api)

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        hub_reader, hub_writer = await asyncio.open_connection(upstream.hostname, upstream.port)

        async def to_hub() -> None:
            while data := await client_reader.read(65536):
                hub_writer.write(data)
                await hub_writer.drain()

        forwarding = asyncio.create_task(to_hub())
        await hub_reader.read(1)  # the answer starts: drop both sides
        forwarding.cancel()
        client_writer.transport.abort()
        hub_writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def lost_accept(url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        with pytest.raises(httpx.TransportError):
            await http.post(f"{API}/accept", json=body)


async def accept(url: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.post(f"{API}/accept", json=body)


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def enroll(url: str, directory: Path, answer: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> int:
    async with peer_client(
        url, directory, cert_pem=answer["client_cert_pem"], key_pem=pem(key), ca_pem=answer["ca_chain_pem"]
    ) as child:
        return (await child.post(f"{API}/enroll", json=ENROLL)).status_code


async def test_a_retry_after_a_lost_answer_gets_a_certificate_the_parent_recognises(
    client, runtime, api, listener, answer_dropping_proxy, tmp_path
):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": csr_for(key)}

    await lost_accept(answer_dropping_proxy, body)
    retried = await accept(api, body)

    assert retried.status_code == 200, retried.text
    answer = retried.json()["data"]
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, data["child"]["id"])
    assert peer.client_cert_fingerprint == answer["client_cert_fingerprint"]
    assert answer["grant"]["bearer_token"].startswith("pngb_")
    assert await enroll(listener, tmp_path / "child", answer, key) == 200
    detail = (await client.get(f"{CHILDREN}/{data['child']['id']}", headers=headers)).json()["data"]["child"]
    assert detail["status"] == "enrolled" and len(detail["grants"]) == 1


async def test_a_token_spent_without_a_key_whose_answer_was_lost_is_recovered_by_rotation(
    client, runtime, api, listener, answer_dropping_proxy, tmp_path
):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    child_id = data["child"]["id"]
    original_agent = {"acceptance_token": data["acceptance_token"], "contract_version": 1}

    await lost_accept(answer_dropping_proxy, original_agent)
    again = await accept(api, original_agent)
    await asyncio.sleep(0.2)  # past POWERNODE_FEDERATION_STUCK_SECONDS (0.1 s here)
    await federation_findings_sweep({"runtime": runtime})
    findings = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"][
        "findings"
    ]
    rotated = await client.post(f"{CHILDREN}/{child_id}/rotate_token", headers=headers)
    key = ec.generate_private_key(ec.SECP256R1())
    fresh = {"acceptance_token": rotated.json()["data"]["acceptance_token"], "contract_version": 1}
    accepted = await accept(api, {**fresh, "csr_pem": csr_for(key)})

    assert again.status_code == 401  # spent, and no key to prove it is the same child
    [stuck] = [f for f in findings if f["kind"] == "peer_accepted_never_enrolled"]
    assert "rotate_token" in stuck["message"]
    assert rotated.status_code == 200, rotated.text
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["data"]["grant"]["bearer_token"].startswith("pngb_")
    assert await enroll(listener, tmp_path / "child", accepted.json()["data"], key) == 200
    await federation_findings_sweep({"runtime": runtime})
    detail = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"]
    assert detail["status"] == "enrolled" and detail["findings"] == []
    live = [g for g in detail["grants"] if g["state"] == "active"]
    assert len(live) == 1  # the grant the lost answer carried was revoked at rotation

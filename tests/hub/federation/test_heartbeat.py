"""Enroll and heartbeat through the trusted-proxy client-certificate header."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest

from hub.config import FederationSettings, Settings
from hub.embedded.process import free_port
from hub.federation.peering.auth import PeerIdentity
from hub.federation.peering.heartbeats import HeartbeatBatcher
from hub.hotpath import asyncpg_dsn
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn

API = "/api/v1/system/federation_api"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "federation": FederationSettings(
                trusted_proxies=["127.0.0.1/32"], client_cert_header="X-Client-S-DN-CN"
            )
        }
    )


async def accepted_child(client, runtime) -> tuple[str, dict[str, str]]:
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "autonomous_peer")
    accept = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )
    return accept.json()["data"]["peer_id"], headers


async def test_a_heartbeat_after_enroll_makes_the_peer_active(client, runtime):
    peer_id, headers = await accepted_child(client, runtime)
    peer = {"X-Client-S-DN-CN": f"fed:{peer_id}"}

    early = await client.post(f"{API}/heartbeat", headers=peer)
    enroll = await client.post(
        f"{API}/enroll", headers=peer, json={"platform_id": "p-1", "platform_url": "http://child.test"}
    )
    beat = await client.post(f"{API}/heartbeat", headers=peer)

    assert early.status_code == 401 and early.json()["code"] == "UNAUTHORIZED"
    assert enroll.status_code == 200 and enroll.json()["data"]["status"] == "enrolled"
    assert beat.status_code == 200 and beat.json()["data"]["status"] == "active"
    child = (await client.get(f"{CHILDREN}/{peer_id}", headers=headers)).json()["data"]["child"]
    assert child["status"] == "active" and child["last_heartbeat_at"] and child["activated_at"]


async def test_heartbeats_without_a_live_identity_are_401(client, runtime):
    peer_id, headers = await accepted_child(client, runtime)
    peer = {"X-Client-S-DN-CN": f"fed:{peer_id}"}
    await client.post(
        f"{API}/enroll", headers=peer, json={"platform_id": "p", "platform_url": "http://c.test"}
    )

    unknown = await client.post(f"{API}/heartbeat", headers={"X-Client-S-DN-CN": "fed:not-a-peer"})
    missing = await client.post(f"{API}/heartbeat")
    bad_body = await client.post(f"{API}/heartbeat", headers=peer, content=b"{not json")
    await client.post(f"{CHILDREN}/{peer_id}/revoke", headers=headers)
    revoked = await client.post(f"{API}/heartbeat", headers=peer)

    assert [r.status_code for r in (unknown, missing, revoked)] == [401, 401, 401]
    assert bad_body.status_code == 422 and bad_body.json()["code"] == "INVALID_REQUEST"


async def test_the_header_is_believed_only_from_a_trusted_proxy(client, runtime, settings):
    peer_id, _ = await accepted_child(client, runtime)
    runtime.settings = settings.model_copy(update={"federation": FederationSettings(trusted_proxies=[])})
    response = await client.post(
        f"{API}/enroll",
        headers={"X-Client-S-DN-CN": f"fed:{peer_id}"},
        json={"platform_id": "p", "platform_url": "http://c.test"},
    )
    assert response.status_code == 401


@pytest.mark.parametrize("fault", ["database unreachable", "statement fails"])
@pytest.mark.parametrize(
    ("connections", "max_batch", "beats", "batches"),
    [(1, 1024, 3, [1, 2]), (2, 1024, 4, [1, 1, 2]), (1, 2, 5, [1, 2, 2])],
    ids=["one-connection", "two-connections", "batches-of-two"],
)
async def test_heartbeats_whose_batch_cannot_be_written_all_fail_and_none_is_left_waiting(
    databases, fault, connections, max_batch, beats, batches, caplog
):
    """Peers beating at once share batches: one batch per free connection, the rest wait for one
    to come back, and no batch grows past max_batch. When the batch cannot be written every
    heartbeat in it gets the database's error, the log says which error for how many, and the
    batcher takes heartbeats again afterwards."""
    caplog.set_level(logging.WARNING, logger="hub.federation.peering.heartbeats")
    if fault == "database unreachable":
        url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
        expected: type[BaseException] = OSError
    else:  # a database without the hub's tables
        name = databases.new_name("empty")
        url = await databases.create(name)
        expected = asyncpg.UndefinedTableError
    batcher = HeartbeatBatcher(url, connections=connections, max_batch=max_batch)
    try:
        async with asyncio.timeout(60):
            for _ in range(2):
                results = await asyncio.gather(
                    *(batcher.beat(uuid.uuid4(), None) for _ in range(beats)), return_exceptions=True
                )
                assert [type(r) for r in results] == [type(results[0])] * beats
                assert isinstance(results[0], expected)
    finally:
        await batcher.close()
        if fault != "database unreachable":
            await databases.drop(name)
    error = type(results[0]).__name__
    logged = [r.getMessage() for r in caplog.records if r.name == "hub.federation.peering.heartbeats"]
    assert sorted(logged) == sorted(f"heartbeat batch of {n} failed: {error}" for n in batches * 2)


def test_an_identity_in_a_log_line_names_the_peer_and_whether_it_is_our_parent_never_its_fingerprint():
    peer_id = uuid.uuid4()

    child = PeerIdentity(peer_id, "ab" * 32)
    parent = PeerIdentity(peer_id, "cd" * 32, as_parent=True)

    assert (repr(child), repr(parent)) == (f"PeerIdentity({peer_id})", f"PeerIdentity({peer_id}, parent)")


async def test_the_batcher_holds_no_more_database_connections_than_it_was_given(database_url):
    """A fleet beating all day must not cost the database a connection per batch: the batcher
    reuses its connections and never holds more than `connections` of them."""
    batcher = HeartbeatBatcher(database_url, connections=2)
    monitor = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for _ in range(25):
            await asyncio.gather(*(batcher.beat(uuid.uuid4(), None) for _ in range(5)))
        held = await monitor.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert 1 <= held <= 2
    finally:
        await batcher.close()
        await monitor.close()


async def test_an_accepted_heartbeat_writes_no_access_line_every_other_answer_does(client, runtime, caplog):
    peer_id, _ = await accepted_child(client, runtime)
    peer = {"X-Client-S-DN-CN": f"fed:{peer_id}"}
    stranger = {"X-Client-S-DN-CN": f"fed:{uuid.uuid4()}"}
    await client.post(f"{API}/enroll", headers=peer, json={"platform_id": "p-1", "platform_url": "http://c.test"})

    with caplog.at_level(logging.INFO, logger="hub.access"):
        beats = [await client.post(f"{API}/heartbeat", headers=peer) for _ in range(3)]
        refused = await client.post(f"{API}/heartbeat", headers=stranger)
        peer_view = await client.get(f"{API}/peer?marker=1", headers=peer)

    assert [b.status_code for b in beats] == [200] * 3 and refused.status_code == 401
    assert peer_view.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.access"]
    assert lines == [
        f'127.0.0.1:123 - "POST {API}/heartbeat HTTP/1.1" 401',
        f'127.0.0.1:123 - "GET {API}/peer?marker=1 HTTP/1.1" 200',
    ]

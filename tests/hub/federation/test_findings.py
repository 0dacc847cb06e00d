"""The findings sweep, with the thresholds set small: a peer silent longer than the heartbeat
interval but not past the stale threshold stays `active`; past it, `degraded` with a finding that
resolves once beats resume; an enrolled peer that never heartbeats and a token that expires before
accept each raise their own finding, resolved once the peer moves on. Ages are set in the database
(no waiting)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from hub.config import FederationSettings, Settings
from hub.database import utcnow
from hub.federation.findings.jobs import federation_findings_sweep
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn

API = "/api/v1/system/federation_api"
FINDINGS = "/api/v1/system/federation/findings"
INTERVAL, STALE = 1.0, 600.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    federation = FederationSettings(
        trusted_proxies=["127.0.0.1/32"],
        client_cert_header="X-Client-S-DN-CN",
        heartbeat_interval_seconds=INTERVAL,
        heartbeat_stale_seconds=STALE,
    )
    return settings.model_copy(update={"federation": federation})


@pytest.fixture
async def operator(runtime) -> dict[str, str]:
    return await operator_headers(runtime)


async def accepted_peer(client, operator) -> tuple[str, dict[str, str]]:
    data = await spawn(client, operator, "autonomous_peer", manual_attach=True)
    accept = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )
    assert accept.status_code == 200
    peer_id = data["child"]["id"]
    return peer_id, {"X-Client-S-DN-CN": f"fed:{peer_id}"}


async def enrolled_peer(client, operator) -> tuple[str, dict[str, str]]:
    peer_id, cert = await accepted_peer(client, operator)
    enroll = await client.post(
        f"{API}/enroll", headers=cert, json={"platform_id": "p", "platform_url": "http://c.test"}
    )
    assert enroll.status_code == 200
    return peer_id, cert


async def backdate(runtime, model, where, **ages: float) -> None:
    async with runtime.sessionmaker() as session:
        values = {column: utcnow() - timedelta(seconds=age) for column, age in ages.items()}
        await session.execute(update(model).where(where).values(**values))
        await session.commit()


async def sweep(runtime) -> None:
    await federation_findings_sweep({"runtime": runtime, "job_id": "cron:test"})


async def findings(client, operator, kind: str, peer_id: str, state: str) -> list[dict]:
    response = await client.get(
        FINDINGS, headers=operator, params={"kind": kind, "peer_id": peer_id, "state": state}
    )
    assert response.status_code == 200
    return response.json()["data"]["findings"]


async def status(client, operator, peer_id: str) -> str:
    return (await client.get(f"{CHILDREN}/{peer_id}", headers=operator)).json()["data"]["child"]["status"]


async def test_a_peer_silent_past_the_interval_but_not_the_stale_threshold_stays_active(
    client, runtime, operator
):
    peer_id, cert = await enrolled_peer(client, operator)
    assert (await client.post(f"{API}/heartbeat", headers=cert)).json()["data"]["status"] == "active"
    await backdate(runtime, FederationPeer, FederationPeer.id == peer_id, last_heartbeat_at=60 * INTERVAL)

    await sweep(runtime)

    assert await status(client, operator, peer_id) == "active"
    assert await findings(client, operator, "peer_heartbeat_stale", peer_id, "open") == []


async def test_a_peer_silent_past_the_stale_threshold_is_degraded_until_it_beats_again(
    client, runtime, operator
):
    peer_id, cert = await enrolled_peer(client, operator)
    await client.post(f"{API}/heartbeat", headers=cert)
    await backdate(runtime, FederationPeer, FederationPeer.id == peer_id, last_heartbeat_at=STALE + 60)

    await sweep(runtime)
    degraded = await status(client, operator, peer_id)
    [finding] = await findings(client, operator, "peer_heartbeat_stale", peer_id, "open")
    beat = await client.post(f"{API}/heartbeat", headers=cert)
    await sweep(runtime)

    assert degraded == "degraded" and finding["severity"] == "warning"
    assert beat.json()["data"]["status"] == "active"
    assert await findings(client, operator, "peer_heartbeat_stale", peer_id, "open") == []
    [resolved] = await findings(client, operator, "peer_heartbeat_stale", peer_id, "resolved")
    assert resolved["id"] == finding["id"]


async def test_an_enrolled_peer_that_never_heartbeats_is_a_finding_until_it_does(client, runtime, operator):
    peer_id, cert = await enrolled_peer(client, operator)
    await sweep(runtime)
    fresh = await findings(client, operator, "peer_enrolled_never_active", peer_id, "open")
    await backdate(runtime, FederationPeer, FederationPeer.id == peer_id, enrolled_at=STALE + 60)

    await sweep(runtime)
    await sweep(runtime)  # a second sweep refreshes it, never a duplicate
    [finding] = await findings(client, operator, "peer_enrolled_never_active", peer_id, "open")
    await client.post(f"{API}/heartbeat", headers=cert)
    await sweep(runtime)

    assert fresh == []
    assert "no heartbeat ever arrived" in finding["message"]
    assert await findings(client, operator, "peer_enrolled_never_active", peer_id, "open") == []
    assert len(await findings(client, operator, "peer_enrolled_never_active", peer_id, "resolved")) == 1


async def test_a_token_that_expired_unaccepted_is_a_finding_until_it_is_rotated(
    client, runtime, operator
):
    data = await spawn(client, operator, "autonomous_peer", manual_attach=True)
    peer_id = data["child"]["id"]
    await sweep(runtime)
    fresh = await findings(client, operator, "acceptance_token_expired", peer_id, "open")
    await backdate(runtime, AcceptanceToken, AcceptanceToken.peer_id == peer_id, expires_at=1)

    await sweep(runtime)
    [finding] = await findings(client, operator, "acceptance_token_expired", peer_id, "open")
    expired = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )
    rotated = await client.post(f"{CHILDREN}/{peer_id}/rotate_token", headers=operator)
    await sweep(runtime)
    after_rotate = await findings(client, operator, "acceptance_token_expired", peer_id, "open")
    accept = await client.post(
        ACCEPT, json={"acceptance_token": rotated.json()["data"]["acceptance_token"], "contract_version": 1}
    )
    await sweep(runtime)

    assert fresh == []
    assert "rotate it" in finding["message"]
    assert expired.status_code == 401 and accept.status_code == 200
    assert after_rotate == []  # the child holds a live token again: nothing for the operator to do
    assert await findings(client, operator, "acceptance_token_expired", peer_id, "open") == []


async def test_an_accepted_peer_that_never_enrolls_is_a_finding_naming_the_cause_seen(
    client, runtime, operator
):
    data = await spawn(client, operator, "autonomous_peer")  # the manual provisioner stages a node
    child_id, node_id = data["child"]["id"], data["child"]["node_instance"]["id"]
    accept = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )
    assert accept.status_code == 200
    await backdate(runtime, FederationPeer, FederationPeer.id == child_id, accepted_at=STALE + 60)
    await sweep(runtime)
    [silent] = await findings(client, operator, "peer_accepted_never_enrolled", child_id, "open")

    # The child's hub calls the plain-http API URL: no client certificate ever arrives.
    body = {"platform_id": node_id, "platform_url": "http://child.test"}
    refused = await client.post(f"{API}/enroll", json=body)
    await sweep(runtime)
    [named] = await findings(client, operator, "peer_accepted_never_enrolled", child_id, "open")
    detail = (await client.get(f"{CHILDREN}/{child_id}", headers=operator)).json()["data"]["child"]
    enroll = await client.post(f"{API}/enroll", headers={"X-Client-S-DN-CN": f"fed:{child_id}"}, json=body)
    await sweep(runtime)

    assert (
        refused.status_code == 401
        and refused.json()["error"] == "A valid peer client certificate is required"
    )
    assert "no enroll call has arrived" in silent["message"]
    assert named["id"] == silent["id"]
    assert "its enroll calls are refused" in named["message"]
    assert "without a client certificate, over plain http" in named["message"]
    assert detail["findings"][0]["kind"] == "peer_accepted_never_enrolled"
    assert enroll.status_code == 200
    assert await findings(client, operator, "peer_accepted_never_enrolled", child_id, "open") == []


async def test_headers_from_an_untrusted_address_are_named_as_the_cause(client, runtime, operator, settings):
    data = await spawn(client, operator, "autonomous_peer")
    child_id, node_id = data["child"]["id"], data["child"]["node_instance"]["id"]
    await client.post(ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1})
    await backdate(runtime, FederationPeer, FederationPeer.id == child_id, accepted_at=STALE + 60)
    runtime.settings = settings.model_copy(
        update={"federation": settings.federation.model_copy(update={"trusted_proxies": []})}
    )

    refused = await client.post(
        f"{API}/enroll",
        headers={"X-Client-S-DN-CN": f"fed:{child_id}"},
        json={"platform_id": node_id, "platform_url": "http://child.test"},
    )
    await sweep(runtime)

    assert refused.status_code == 401
    [finding] = await findings(client, operator, "peer_accepted_never_enrolled", child_id, "open")
    assert "which is not in POWERNODE_FEDERATION_TRUSTED_PROXIES" in finding["message"]

"""The original Powernode's wire, against the hub over real HTTP (uvicorn on a port), with the
bodies exactly as the original's request specs send them (children_spec, accept_spec,
heartbeat_spec of its Rails server). The client certificate arrives as a trusted proxy's CN header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hub.config import FederationSettings, Settings
from hub.embedded.process import free_port
from hub.federation import endpoints
from hub.main import create_app
from hub.operators.permissions import ALL_PERMISSIONS
from hub.operators.service import create_operator_token
from hub.runtime import HubRuntime
from shared_contract.payload import read_fw_cfg_tree
from shared_contract.version import PLATFORM_VERSION
from tests.hub.helpers import ACCEPT, CHILDREN, SPAWN, make_csr

API = "/api/v1/system/federation_api"
# children_spec.rb: base_payload
ORIGINAL_SPAWN = {
    "spawn_mode": "managed_child",
    "parent_url": "https://parent.alice.tld",
    "spawn_target": {"template_id": "powernode-hub", "region": "us-west"},
}
# accept_spec.rb: valid_payload (without the token)
ORIGINAL_ACCEPT = {
    "contract_version": 1,
    "extension_slugs": ["trading"],
    "capabilities": {"skill": {"read": True}},
    "endpoints": [{"url": "https://child.example.com:443", "scope": "wan", "priority": 1}],
}
# heartbeat_spec.rb: "transitions enrolled → active on first heartbeat"
ORIGINAL_HEARTBEAT = {
    "capabilities": {"v": 2},
    "endpoints": [{"url": "https://peer.example.com:443", "scope": "wan", "priority": 1}],
    "sync_cursor": {"accounts": {"last_id": "abc"}},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    federation = FederationSettings(trusted_proxies=["127.0.0.1/32"], client_cert_header="X-Client-S-DN-CN")
    return settings.model_copy(update={"federation": federation})


@pytest.fixture
async def hub(settings: Settings, runtime: HubRuntime) -> AsyncIterator[httpx.AsyncClient]:
    """The hub's app served by uvicorn on a free port, and a client for it."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, runtime), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def operator(runtime: HubRuntime) -> tuple[str, dict[str, str]]:
    async with runtime.sessionmaker() as session:
        row, token = await create_operator_token(session, name="spa", permissions=ALL_PERMISSIONS)
        await session.commit()
    return str(row.id), {"Authorization": f"Bearer {token}"}


async def spawned(hub: httpx.AsyncClient, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = await hub.post(SPAWN, json=ORIGINAL_SPAWN | changes, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


async def child_view(hub: httpx.AsyncClient, headers: dict[str, str], child_id: str) -> dict[str, Any]:
    response = await hub.get(f"{CHILDREN}/{child_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["child"]


async def enrolled(hub: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Spawn, accept with the original agent's body, enroll (our explicit step); the CN header."""
    data = await spawned(hub, headers)
    accept = await hub.post(ACCEPT, json={"acceptance_token": data["acceptance_token"], **ORIGINAL_ACCEPT})
    assert accept.status_code == 200, accept.text
    peer_id = accept.json()["data"]["peer_id"]
    cn = {"X-Client-S-DN-CN": f"fed:{peer_id}"}
    enroll = await hub.post(
        f"{API}/enroll",
        headers=cn,
        json={"platform_id": "child-1", "platform_url": "https://child.example.com"},
    )
    assert enroll.status_code == 200, enroll.text
    return peer_id, cn


async def test_the_originals_heartbeat_body_is_taken_and_what_it_carries_is_shown(hub, runtime):
    _, headers = await operator(runtime)
    peer_id, cn = await enrolled(hub, headers)

    first = await hub.post(f"{API}/heartbeat", headers=cn, json=ORIGINAL_HEARTBEAT)

    assert first.status_code == 200, first.text
    assert first.json()["data"]["status"] == "active"
    assert first.json()["data"]["schema_compatibility"] == {
        "status": "incompatible",
        "source": "implicit",
        "local_version": PLATFORM_VERSION,
        "remote_version": None,
        "notes": "the peer didn't report a platform_version",
        "contract_version": 1,
        "compatible": False,
    }
    child = await child_view(hub, headers, peer_id)
    assert child["status"] == "active"
    assert child["capabilities"] == {"v": 2}
    assert child["endpoints"] == [{"url": "https://peer.example.com:443", "scope": "wan", "priority": 1}]
    assert child["sync_cursor"] == {"accounts": {"last_id": "abc"}}
    assert child["extension_slugs"] == ["trading"]  # from the accept, as the original persists it

    later = {
        "sync_cursor": {"users": {"last_synced_at": "2026-11-28T16:00:00Z", "last_id": "u-9"}},
        "extension_slugs": ["trading", "billing", " "],
        "platform_version": PLATFORM_VERSION,
        "data_residency": " eu-west ",
    }
    second = await hub.post(f"{API}/heartbeat", headers=cn, json=later)
    empty = await hub.post(f"{API}/heartbeat", headers=cn, json={})

    compatibility = second.json()["data"]["schema_compatibility"]
    assert (compatibility["status"], compatibility["remote_version"]) == ("compatible", PLATFORM_VERSION)
    assert empty.json()["data"]["schema_compatibility"]["status"] == "compatible"  # the stamped version
    child = await child_view(hub, headers, peer_id)
    assert child["sync_cursor"] == {
        "accounts": {"last_id": "abc"},
        "users": {"last_synced_at": "2026-11-28T16:00:00Z", "last_id": "u-9"},
    }
    assert child["extension_slugs"] == ["trading", "billing"]
    assert child["capabilities"] == {"v": 2}  # blank values leave the stored ones alone
    assert (child["platform_version"], child["data_residency"]) == (PLATFORM_VERSION, "eu-west")


async def test_schema_compatibility_follows_the_implicit_rule(hub, runtime):
    _, headers = await operator(runtime)
    _, cn = await enrolled(hub, headers)
    major, minor = (int(p) for p in PLATFORM_VERSION.split(".")[:2])

    answers = {}
    for version in (f"{major}.{minor + 1}.0", f"{major}.{minor + 2}.0", f"{major + 1}.0.0", "garbage"):
        response = await hub.post(f"{API}/heartbeat", headers=cn, json={"platform_version": version})
        answers[version] = response.json()["data"]["schema_compatibility"]

    assert [a["status"] for a in answers.values()] == [
        "compatible",
        "incompatible",
        "incompatible",
        "incompatible",
    ]
    assert {a["source"] for a in answers.values()} == {"implicit"}
    assert "minor delta > 1" in answers[f"{major}.{minor + 2}.0"]["notes"]
    assert "unparseable" in answers["garbage"]["notes"]


async def test_remote_instance_url_is_the_spawns_url_until_the_child_reports_its_own(hub, runtime):
    _, headers = await operator(runtime)
    data = await spawned(hub, headers)
    child_id = data["child"]["id"]

    listed = (await hub.get(CHILDREN, headers=headers)).json()["data"]["children"]
    assert data["child"]["remote_instance_url"] == "https://parent.alice.tld"
    assert [c["remote_instance_url"] for c in listed if c["id"] == child_id] == ["https://parent.alice.tld"]
    assert (await child_view(hub, headers, child_id))["remote_instance_url"] == "https://parent.alice.tld"

    accept = await hub.post(ACCEPT, json={"acceptance_token": data["acceptance_token"], **ORIGINAL_ACCEPT})
    cn = {"X-Client-S-DN-CN": f"fed:{accept.json()['data']['peer_id']}"}
    await hub.post(
        f"{API}/enroll",
        headers=cn,
        json={"platform_id": "child-1", "platform_url": "https://child.example.com"},
    )

    listed = (await hub.get(CHILDREN, headers=headers)).json()["data"]["children"]
    assert [c["remote_instance_url"] for c in listed if c["id"] == child_id] == ["https://child.example.com"]
    assert (await child_view(hub, headers, child_id))["remote_instance_url"] == "https://child.example.com"


async def test_the_spawn_records_region_initiator_and_the_provisioners_answer(hub, runtime):
    operator_id, headers = await operator(runtime)

    data = await spawned(hub, headers)
    manual = await spawned(
        hub, headers, spawn_target={**ORIGINAL_SPAWN["spawn_target"], "manual_attach": True}
    )

    payload = data["spawn_payload"]
    assert (payload["region"], payload["initiated_by_user_id"]) == ("us-west", operator_id)
    assert payload["parent_url"] == "https://parent.alice.tld" and payload["spawn_mode"] == "managed_child"
    child = data["child"]
    node = child["node_instance"]
    staged = read_fw_cfg_tree(Path(node["details"]["fw_cfg_files"][0]).parent.parent / "by_name")
    assert (staged.region, staged.initiated_by_user_id) == ("us-west", operator_id)
    assert child["metadata"]["provisioner_response"] == {
        "ok": True,
        "manual_attach_required": True,  # the manual provisioner only staged the payload
        "provisioner": "manual",
        "node_instance_id": node["id"],
        "provider_ref": node["provider_ref"],
        "state": "staged",
    }
    assert (await child_view(hub, headers, child["id"]))["metadata"]["provisioner_response"]["ok"] is True
    assert manual["child"]["metadata"]["provisioner_response"] == {
        "ok": True,
        "manual_attach_required": True,
        "provisioner": None,
    }


async def test_revoke_stores_the_reason_and_answers_the_full_child(hub, runtime):
    _, headers = await operator(runtime)
    child_id = (await spawned(hub, headers, spawn_mode="autonomous_peer"))["child"]["id"]
    other_id = (await spawned(hub, headers, spawn_mode="autonomous_peer"))["child"]["id"]

    revoked = await hub.post(
        f"{CHILDREN}/{child_id}/revoke", json={"reason": "decommission"}, headers=headers
    )
    again = await hub.post(f"{CHILDREN}/{child_id}/revoke", headers=headers)
    no_reason = await hub.post(f"{CHILDREN}/{other_id}/revoke", headers=headers)

    assert revoked.status_code == 200 and again.status_code == 409
    child = revoked.json()["data"]["child"]
    assert child["status"] == "revoked"
    assert child["metadata"]["revocation_reason"] == "decommission"
    assert {"endpoints", "capabilities", "metadata", "signed_at", "grants", "node_instance"} <= child.keys()
    assert child == await child_view(hub, headers, child_id)
    assert no_reason.json()["data"]["child"]["metadata"]["revocation_reason"] == "operator-initiated"


@pytest.mark.parametrize("with_csr", [False, True])
async def test_signed_at_is_set_when_accept_signs_the_peering(hub, runtime, with_csr):
    _, headers = await operator(runtime)
    data = await spawned(hub, headers)
    assert data["child"]["signed_at"] is None
    body = {"acceptance_token": data["acceptance_token"], **ORIGINAL_ACCEPT}
    if with_csr:
        body["csr_pem"] = make_csr()[1]

    accept = await hub.post(ACCEPT, json=body)

    assert accept.status_code == 200, accept.text
    child = await child_view(hub, headers, data["child"]["id"])
    assert child["signed_at"] is not None
    assert (child["client_cert_fingerprint"] is not None) is with_csr


async def test_a_cluster_member_on_the_spas_default_template_is_told_which_templates_fit(hub, runtime):
    _, headers = await operator(runtime)

    response = await hub.post(SPAWN, json=ORIGINAL_SPAWN | {"spawn_mode": "cluster_member"}, headers=headers)

    assert response.status_code == 422
    error = response.json()
    assert error["code"] == "TEMPLATE_MISMATCH"
    assert "'powernode-hub' cannot host a cluster_member" in error["error"]
    assert "templates that fit: powernode-hub-cluster-member" in error["error"]
    assert error["details"]["fitting_templates"] == ["powernode-hub-cluster-member"]


def serve_listeners(runtime: HubRuntime, *, configured: bool = False) -> endpoints.Listeners:
    bound = endpoints.Listeners(
        api_url="http://127.0.0.1:18000",
        federation_url="https://127.0.0.1:18001",
        public_url_configured=configured,
    )
    runtime.extras[endpoints.EXTRAS_KEY] = bound
    return bound


async def test_accept_tells_the_child_where_to_present_its_certificate(hub, runtime, settings):
    _, headers = await operator(runtime)
    plain = await spawned(hub, headers)
    proxied = await spawned(hub, headers)

    unknown = await hub.post(
        ACCEPT, json={"acceptance_token": plain["acceptance_token"], "contract_version": 1}
    )
    serve_listeners(runtime)
    runtime.settings = settings.model_copy(update={"public_url": "https://hub.example.com"})
    proxy = await hub.post(
        ACCEPT, json={"acceptance_token": proxied["acceptance_token"], "contract_version": 1}
    )

    assert "federation_url" not in unknown.json()["data"]  # not under serve: the child keeps parent_url
    assert proxy.json()["data"]["federation_url"] == "https://hub.example.com"


async def test_under_serve_the_federation_url_is_the_tls_listener_on_the_host_the_child_used(hub, runtime):
    _, headers = await operator(runtime)
    serve_listeners(runtime)
    data = await spawned(hub, headers, parent_url="http://127.0.0.1:18000")

    accept = await hub.post(
        ACCEPT,
        json={"acceptance_token": data["acceptance_token"], "contract_version": 1},
        headers={"Host": "10.0.2.2:18000"},
    )

    assert accept.json()["data"]["federation_url"] == "https://10.0.2.2:18001"


@pytest.mark.parametrize(
    ("parent_url", "fragment"),
    [
        ("https://127.0.0.1:18000", "names the API listener with https, but it speaks plain http"),
        ("http://127.0.0.1:18001", "names the federation listener with http, but it speaks https"),
        ("https://127.0.0.1:9999", "reaches none of this hub's listeners"),
        ("https://parent.alice.tld", "reaches none of this hub's listeners"),
    ],
)
async def test_a_parent_url_none_of_our_listeners_answers_is_a_clear_422(hub, runtime, parent_url, fragment):
    _, headers = await operator(runtime)
    bound = serve_listeners(runtime)

    response = await hub.post(SPAWN, json=ORIGINAL_SPAWN | {"parent_url": parent_url}, headers=headers)

    assert response.status_code == 422
    assert response.json()["code"] == "PARENT_URL_UNREACHABLE"
    assert fragment in response.json()["error"] and bound.api_url in response.json()["error"]
    assert bound.federation_url in response.json()["error"]


async def test_behind_a_configured_public_url_any_parent_url_is_taken(hub, runtime):
    _, headers = await operator(runtime)
    serve_listeners(runtime, configured=True)

    response = await hub.post(SPAWN, json=ORIGINAL_SPAWN, headers=headers)

    assert response.status_code == 201

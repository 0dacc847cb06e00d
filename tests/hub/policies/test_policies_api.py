"""Intervention policies: CRUD with origin and overrides, and how an action is evaluated."""

from __future__ import annotations

import pytest

from hub.operators.permissions import VIEWER_PERMISSIONS
from tests.hub.grants.child_side import FEDERATION_API, become_child
from tests.hub.helpers import operator_headers

POLICIES = "/api/v1/system/intervention_policies"


@pytest.fixture
async def operator(runtime):
    return await operator_headers(runtime)


async def create(client, operator, pattern, decision, **extra):
    response = await client.post(
        POLICIES, headers=operator, json={"action_pattern": pattern, "decision": decision, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]["policy"]


async def evaluate(client, operator, action):
    response = await client.get(f"{POLICIES}/evaluate", headers=operator, params={"action": action})
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_create_show_update_delete(client, operator):
    policy = await create(client, operator, "system.spawn", "require_approval", scope_tags=["cluster"])

    shown = await client.get(f"{POLICIES}/{policy['id']}", headers=operator)
    patched = await client.patch(f"{POLICIES}/{policy['id']}", headers=operator, json={"decision": "deny"})
    deleted = await client.delete(f"{POLICIES}/{policy['id']}", headers=operator)
    listed = await client.get(POLICIES, headers=operator)

    assert (
        policy["origin"] == "local" and policy["overridden"] is False and policy["scope_tags"] == ["cluster"]
    )
    assert shown.json()["data"]["policy"]["decision"] == "require_approval"
    assert patched.json()["data"]["policy"]["decision"] == "deny"
    assert deleted.status_code == 200 and listed.json()["data"] == {"policies": [], "count": 0}


@pytest.mark.parametrize(
    "body",
    [
        {"action_pattern": "system.*.spawn", "decision": "deny"},
        {"action_pattern": "System.spawn", "decision": "deny"},
        {"action_pattern": "system.spawn", "decision": "maybe"},
        {"action_pattern": "system.spawn", "decision": "deny", "scope_tags": ["Not A Tag"]},
    ],
)
async def test_invalid_policies_are_400(client, operator, body):
    assert (await client.post(POLICIES, headers=operator, json=body)).status_code == 400


async def test_one_local_policy_per_pattern(client, operator):
    await create(client, operator, "system.*", "deny")

    again = await client.post(
        POLICIES, headers=operator, json={"action_pattern": "system.*", "decision": "allow"}
    )

    assert again.status_code == 409 and again.json()["code"] == "POLICY_EXISTS"


async def test_a_viewer_reads_and_evaluates_but_cannot_change(client, runtime, operator):
    await create(client, operator, "system.*", "deny")
    viewer = await operator_headers(runtime, VIEWER_PERMISSIONS)

    assert (await client.get(POLICIES, headers=viewer)).status_code == 200
    assert (await evaluate(client, viewer, "system.spawn"))["decision"] == "deny"
    refused = await client.post(POLICIES, headers=viewer, json={"action_pattern": "x", "decision": "deny"})
    assert refused.status_code == 403


async def test_the_most_specific_pattern_wins(client, operator):
    await create(client, operator, "*", "deny")
    await create(client, operator, "system.*", "require_approval")
    await create(client, operator, "system.federation.*", "allow")
    await create(client, operator, "system.federation.spawn", "deny")

    decisions = {
        action: (await evaluate(client, operator, action))["decision"]
        for action in (
            "billing.charge",
            "system.restart",
            "system.federation.peer.read",
            "system.federation.spawn",
        )
    }

    assert decisions == {
        "billing.charge": "deny",
        "system.restart": "require_approval",
        "system.federation.peer.read": "allow",
        "system.federation.spawn": "deny",
    }
    ranked = await evaluate(client, operator, "system.federation.spawn")
    assert [p["action_pattern"] for p in ranked["considered"]] == [
        "system.federation.spawn",
        "system.federation.*",
        "system.*",
        "*",
    ]
    assert ranked["rule"] == "most specific pattern"


async def test_no_policy_means_allow(client, operator):
    result = await evaluate(client, operator, "system.spawn")

    assert result == {
        "action": "system.spawn",
        "decision": "allow",
        "policy": None,
        "considered": [],
        "rule": "no policy matches",
    }


async def test_a_wildcard_does_not_match_its_own_prefix(client, operator):
    await create(client, operator, "system.*", "deny")

    assert (await evaluate(client, operator, "system"))["decision"] == "allow"


async def cascade(client, parent, *policies, generated_at="2025-01-01T00:00:00+00:00"):
    body = {
        "generated_at": generated_at,
        "policies": [
            {"id": pid, "action_pattern": pattern, "decision": decision}
            for pid, pattern, decision in policies
        ],
    }
    response = await client.put(
        f"{FEDERATION_API}/intervention_policies", headers=parent.headers(), json=body
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_a_local_override_beats_the_cascaded_default_and_is_shown(client, runtime, operator, tmp_path):
    parent = await become_child(runtime, tmp_path)
    await cascade(
        client,
        parent,
        ("00000000-0000-0000-0000-00000000000a", "system.spawn", "deny"),
        ("00000000-0000-0000-0000-00000000000b", "system.*", "require_approval"),
    )

    override = await create(client, operator, "system.spawn", "allow")
    listed = (await client.get(POLICIES, headers=operator)).json()["data"]["policies"]
    result = await evaluate(client, operator, "system.spawn")

    spawn = {p["origin"]: p for p in listed if p["action_pattern"] == "system.spawn"}
    assert spawn["cascaded"]["overridden"] is True and spawn["local"]["overridden"] is False
    assert result["decision"] == "allow" and result["policy"]["id"] == override["id"]
    assert result["rule"] == "local overrides cascaded"
    await client.delete(f"{POLICIES}/{override['id']}", headers=operator)
    assert (await evaluate(client, operator, "system.spawn"))["decision"] == "deny"
    wildcard = [p for p in (await client.get(POLICIES, headers=operator)).json()["data"]["policies"]]
    assert not any(p["overridden"] for p in wildcard)


async def test_deny_beats_allow_between_equals(client, runtime, operator, tmp_path):
    parent = await become_child(runtime, tmp_path)
    await cascade(
        client,
        parent,
        ("00000000-0000-0000-0000-00000000000a", "system.*", "allow"),
        ("00000000-0000-0000-0000-00000000000b", "system.*", "deny"),
    )

    result = await evaluate(client, operator, "system.spawn")

    assert result["decision"] == "deny" and result["rule"] == "strictest decision among equals"


async def test_a_cascaded_policy_is_read_only_but_can_be_deleted(client, runtime, operator, tmp_path):
    parent = await become_child(runtime, tmp_path)
    await cascade(client, parent, ("00000000-0000-0000-0000-00000000000a", "system.*", "deny"))
    [policy] = (await client.get(POLICIES, headers=operator, params={"origin": "cascaded"})).json()["data"][
        "policies"
    ]

    patched = await client.patch(f"{POLICIES}/{policy['id']}", headers=operator, json={"decision": "allow"})
    deleted = await client.delete(f"{POLICIES}/{policy['id']}", headers=operator)

    assert patched.status_code == 409 and patched.json()["code"] == "CASCADED_POLICY"
    assert deleted.status_code == 200

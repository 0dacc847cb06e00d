"""Which policies cascade to which child, when the parent pushes, and what the child keeps."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from hub.database import utcnow
from hub.federation.peers.models import FederationPeer
from hub.federation.policies import cascade
from hub.federation.policies import service as policies_service
from hub.federation.policies.jobs import CASCADE_JOB
from hub.federation.policies.models import InterventionPolicy
from hub.runtime import PRIMARY_QUEUE
from tests.hub.grants.child_side import FEDERATION_API, become_child
from tests.hub.helpers import operator_headers

POLICIES = "/api/v1/system/intervention_policies"


async def add_peer(runtime, mode, *, status="active", emancipated=False):
    peer = FederationPeer(
        name=mode,
        spawn_role="parent",
        spawn_mode=mode,
        status=status,
        emancipated_at=utcnow() if emancipated else None,
    )
    async with runtime.sessionmaker() as session, session.begin():
        session.add(peer)
    return peer


async def add_policies(client, runtime):
    operator = await operator_headers(runtime)
    for pattern, tags in (("system.*", ["cluster"]), ("system.spawn", []), ("billing.*", ["cluster"])):
        response = await client.post(
            POLICIES,
            headers=operator,
            json={"action_pattern": pattern, "decision": "deny", "scope_tags": tags},
        )
        assert response.status_code == 201


@pytest.mark.parametrize(
    ("mode", "emancipated", "expected"),
    [
        ("managed_child", False, ["system.*", "system.spawn"]),
        ("cluster_member", False, ["system.*"]),
        ("autonomous_peer", False, []),
        ("managed_child", True, []),
    ],
)
async def test_cascade_selection_per_mode(client, runtime, mode, emancipated, expected):
    await add_policies(client, runtime)
    peer = await add_peer(runtime, mode, emancipated=emancipated)

    async with runtime.sessionmaker() as session:
        selection = await policies_service.cascade_selection(session, peer=peer)

    assert sorted(p.action_pattern for p in selection) == expected


async def queued_peers(runtime):
    jobs = await runtime.primary_queue().queued_jobs(queue_name=PRIMARY_QUEUE)
    return sorted(j.kwargs["peer_id"] for j in jobs if j.function == CASCADE_JOB)


async def test_a_system_policy_change_is_pushed_to_managed_children_only(client, runtime):
    managed = await add_peer(runtime, "managed_child")
    for mode, emancipated in (("autonomous_peer", False), ("cluster_member", False), ("managed_child", True)):
        await add_peer(runtime, mode, emancipated=emancipated)
    await add_peer(runtime, "managed_child", status="revoked")
    operator = await operator_headers(runtime)

    await client.post(POLICIES, headers=operator, json={"action_pattern": "billing.*", "decision": "deny"})
    assert await queued_peers(runtime) == []
    await client.post(POLICIES, headers=operator, json={"action_pattern": "system.*", "decision": "deny"})

    assert await queued_peers(runtime) == [str(managed.id)]


async def test_no_push_to_an_emancipated_child(runtime):
    peer = await add_peer(runtime, "managed_child", emancipated=True)

    assert await cascade.push(runtime, peer_id=peer.id) == {"skipped": "not a managed child we may push to"}


async def put(client, parent, policies, generated_at):
    body = {"generated_at": generated_at, "policies": policies}
    response = await client.put(
        f"{FEDERATION_API}/intervention_policies", headers=parent.headers(), json=body
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def cascaded(runtime):
    async with runtime.sessionmaker() as session:
        rows = await session.scalars(
            select(InterventionPolicy).where(InterventionPolicy.origin == "cascaded")
        )
        return sorted((p.action_pattern, p.decision) for p in rows)


async def test_a_push_replaces_the_parents_set_and_a_late_older_one_is_ignored(client, runtime, tmp_path):
    parent = await become_child(runtime, tmp_path)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    first = [
        {"id": a, "action_pattern": "system.*", "decision": "deny"},
        {"id": b, "action_pattern": "system.spawn", "decision": "allow"},
        {"id": str(uuid.uuid4()), "action_pattern": "billing.*", "decision": "deny"},
    ]
    second = [{"id": a, "action_pattern": "system.*", "decision": "require_approval"}]

    applied = await put(client, parent, first, "2025-01-01T00:00:00+00:00")
    replaced = await put(client, parent, second, "2025-01-01T00:00:02+00:00")
    late = await put(client, parent, first, "2025-01-01T00:00:01+00:00")

    assert applied == {"applied": 2, "removed": 0, "ignored": 1, "stale": False}
    assert replaced == {"applied": 1, "removed": 1, "ignored": 0, "stale": False}
    assert late["stale"] is True
    assert await cascaded(runtime) == [("system.*", "require_approval")]


async def test_after_emancipation_cascaded_policies_stay_and_can_be_deleted(client, runtime, tmp_path):
    parent = await become_child(runtime, tmp_path)
    await put(
        client,
        parent,
        [{"id": str(uuid.uuid4()), "action_pattern": "system.*", "decision": "deny"}],
        "2025-01-01T00:00:00+00:00",
    )
    operator = await operator_headers(runtime)
    grants = (await client.get("/api/v1/system/federation/grants", headers=operator)).json()["data"]["grants"]
    await client.post(f"/api/v1/system/federation/grants/{grants[0]['id']}/revoke", headers=operator)

    refused = await client.put(
        f"{FEDERATION_API}/intervention_policies",
        headers=parent.headers(),
        json={"generated_at": "2025-01-02T00:00:00+00:00", "policies": []},
    )

    assert refused.status_code == 401
    [policy] = (await client.get(POLICIES, headers=operator)).json()["data"]["policies"]
    assert policy["origin"] == "cascaded" and policy["decision"] == "deny"
    assert (await client.delete(f"{POLICIES}/{policy['id']}", headers=operator)).status_code == 200

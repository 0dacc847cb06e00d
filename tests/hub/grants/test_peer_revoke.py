"""`peer.revoke!` from either side: rows and grants revoked here, the other side told or telling."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from hub.audit.models import AuditEvent
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.jobs import REVOKE_NOTICE_JOB
from hub.runtime import PRIMARY_QUEUE
from tests.hub.grants.child_side import FEDERATION_API, become_child
from tests.hub.helpers import ACCEPT, operator_headers, spawn

PEERS = "/api/v1/system/federation/peers"


async def notices(runtime):
    jobs = await runtime.primary_queue().queued_jobs(queue_name=PRIMARY_QUEUE)
    return [j.kwargs["peer_id"] for j in jobs if j.function == REVOKE_NOTICE_JOB]


async def grant_rows(runtime):
    async with runtime.sessionmaker() as session:
        return list((await session.scalars(select(FederationGrant))).all())


async def test_the_child_lists_its_parent_and_revokes_it(client, runtime, tmp_path):
    parent = await become_child(runtime, tmp_path)
    operator = await operator_headers(runtime)

    listed = (await client.get(PEERS, headers=operator)).json()["data"]["peers"]
    response = await client.post(f"{PEERS}/{parent.row_id}/revoke", headers=operator, json={"reason": "bye"})
    again = await client.post(f"{PEERS}/{parent.row_id}/revoke", headers=operator)
    call = await client.get(f"{FEDERATION_API}/peer", headers=parent.headers())

    assert [(p["id"], p["spawn_role"]) for p in listed] == [(str(parent.row_id), "child")]
    assert response.status_code == 200 and response.json()["data"]["peer"]["status"] == "revoked"
    assert again.status_code == 409
    assert [g.state() for g in await grant_rows(runtime)] == ["revoked"]
    assert await notices(runtime) == [str(parent.row_id)]
    assert call.status_code == 401 and call.json()["code"] == "PEER_REVOKED"


async def test_the_parent_telling_us_it_revoked_revokes_our_side_without_telling_back(
    client, runtime, tmp_path
):
    parent = await become_child(runtime, tmp_path)

    response = await client.post(
        f"{FEDERATION_API}/revoke", headers=parent.headers(bearer=None), json={"reason": "x"}
    )

    assert response.status_code == 200 and response.json()["data"]["status"] == "revoked"
    assert [g.state() for g in await grant_rows(runtime)] == ["revoked"]
    assert await notices(runtime) == []
    operator = await operator_headers(runtime)
    [row] = (await client.get(PEERS, headers=operator)).json()["data"]["peers"]
    assert row["status"] == "revoked" and row["revoke_reason"] == "revoked by the peer: x"


async def test_a_child_telling_the_parent_it_revoked_drops_the_parents_grant_and_secret(client, runtime):
    operator = await operator_headers(runtime)
    data = await spawn(client, operator, "managed_child")
    child_id = data["child"]["id"]
    await client.post(ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1})
    [grant] = await grant_rows(runtime)
    assert await runtime.secrets.get(grant.bearer_secret_ref)

    response = await client.post(f"{FEDERATION_API}/revoke", headers={"X-Client-S-DN-CN": f"fed:{child_id}"})

    assert response.status_code == 200
    [grant_after] = await grant_rows(runtime)
    assert grant_after.state() == "revoked" and grant_after.bearer_secret_ref is None
    assert await runtime.secrets.get(grant.bearer_secret_ref) is None
    async with runtime.sessionmaker() as session:
        [event] = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "child.revoke"))).all()
    assert event.actor == f"peer:{child_id}"
    call = await client.get(f"{FEDERATION_API}/peer", headers={"X-Client-S-DN-CN": f"fed:{child_id}"})
    assert call.status_code == 401 and call.json()["code"] == "PEER_REVOKED"


@pytest.mark.parametrize(
    ("reason", "recorded"), [("moving on", "given up by the peer: moving on"), (None, "given up by the peer")]
)
async def test_the_parent_giving_up_the_grant_we_gave_it_revokes_it_once_and_its_bearer_stops_working(
    client, runtime, tmp_path, reason, recorded
):
    parent = await become_child(runtime, tmp_path)
    [grant] = await grant_rows(runtime)
    url = f"{FEDERATION_API}/grants/{grant.id}/revoke"

    first = await client.post(url, headers=parent.headers(bearer=None), json={"reason": reason})
    again = await client.post(url, headers=parent.headers(bearer=None), json={"reason": "changed my mind"})
    call = await client.get(f"{FEDERATION_API}/peer", headers=parent.headers())

    [row] = await grant_rows(runtime)
    async with runtime.sessionmaker() as session:
        events = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "grant.revoked_by_peer"))
        ).all()
    assert first.status_code == 200 and first.json()["data"] == {
        "grant_id": str(grant.id),
        "state": "revoked",
    }
    assert again.status_code == 200 and again.json()["data"]["state"] == "revoked"
    assert row.revoke_reason == recorded
    assert row.purge_after - row.revoked_at == timedelta(
        days=runtime.settings.federation.grant_retention_days
    )
    assert [(e.actor, e.target, e.details) for e in events] == [
        (f"peer:{parent.row_id}", str(grant.id), {"peer_id": str(parent.row_id), "reason": reason})
    ]
    assert call.status_code == 401 and call.json()["code"] == "GRANT_REVOKED"


async def test_a_grant_the_parent_does_not_have_from_us_cannot_be_given_up(client, runtime, tmp_path):
    parent = await become_child(runtime, tmp_path)
    [grant] = await grant_rows(runtime)
    stranger = await become_child(runtime, tmp_path / "stranger")

    answers = {
        "another peer's grant": await client.post(
            f"{FEDERATION_API}/grants/{grant.id}/revoke", headers=stranger.headers(bearer=None)
        ),
        "unknown": await client.post(
            f"{FEDERATION_API}/grants/{uuid.uuid4()}/revoke", headers=parent.headers(bearer=None)
        ),
        "not a UUID": await client.post(
            f"{FEDERATION_API}/grants/nope/revoke", headers=parent.headers(bearer=None)
        ),
    }

    assert {k: (a.status_code, a.json()["code"]) for k, a in answers.items()} == {
        "another peer's grant": (404, "NOT_FOUND"),
        "unknown": (404, "NOT_FOUND"),
        "not a UUID": (400, "VALIDATION_FAILED"),
    }
    assert [g.state() for g in await grant_rows(runtime)] == ["active", "active"]

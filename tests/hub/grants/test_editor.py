"""The grants editor on the parent: list with filters, revoke (mutual emancipation), audit."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from hub.audit.models import AuditEvent
from hub.database import utcnow
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import FederationPeer
from hub.operators.permissions import VIEWER_PERMISSIONS
from tests.hub.helpers import ACCEPT, CHILDREN, make_csr, operator_headers, spawn

GRANTS = "/api/v1/system/federation/grants"


async def accepted_child(client, headers, mode="managed_child", csr=None):
    data = await spawn(client, headers, mode)
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}
    if csr is not None:
        body["csr_pem"] = csr
    accepted = await client.post(ACCEPT, json=body)
    assert accepted.status_code == 200, accepted.text
    return data["child"]["id"], body, accepted.json()["data"]


async def grants(client, headers, **params):
    response = await client.get(GRANTS, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]["grants"]


async def test_the_managed_childs_grant_is_listed_and_filtered(client, runtime):
    headers = await operator_headers(runtime)
    managed, _, _ = await accepted_child(client, headers)
    await accepted_child(client, headers, "autonomous_peer")

    listed = await grants(client, headers)
    by_kind = await grants(client, headers, resource_kind="managed_child_operator", state="active")
    by_peer = await grants(client, headers, peer_id=managed)
    revoked = await grants(client, headers, state="revoked")

    [grant] = listed
    assert grant["peer_id"] == managed and grant["direction"] == "held" and grant["state"] == "active"
    assert by_kind == by_peer == listed and revoked == []
    assert "bearer" not in str(grant).lower()


async def test_a_bad_filter_is_400(client, runtime):
    headers = await operator_headers(runtime)

    assert (await client.get(GRANTS, headers=headers, params={"state": "gone"})).status_code == 400
    assert (await client.get(GRANTS, headers=headers, params={"peer_id": "nope"})).status_code == 400


async def test_revoking_the_held_grant_deletes_its_secret_and_emancipates(client, runtime):
    headers = await operator_headers(runtime)
    child_id, _, _ = await accepted_child(client, headers)
    [grant] = await grants(client, headers)
    async with runtime.sessionmaker() as session:
        ref = (await session.get(FederationGrant, grant["id"])).bearer_secret_ref
    assert await runtime.secrets.get(ref)

    response = await client.post(f"{GRANTS}/{grant['id']}/revoke", headers=headers, json={"reason": "done"})

    revoked = response.json()["data"]["grant"]
    assert (
        response.status_code == 200 and revoked["state"] == "revoked" and revoked["revoke_reason"] == "done"
    )
    assert revoked["purge_after"][:10] == (utcnow() + timedelta(days=90)).isoformat()[:10]
    assert await runtime.secrets.get(ref) is None
    async with runtime.sessionmaker() as session:
        row = await session.get(FederationGrant, grant["id"])
        events = (await session.scalars(select(AuditEvent).where(AuditEvent.target == grant["id"]))).all()
    assert row.bearer_secret_ref is None
    assert [e.action for e in events] == ["grant.revoke"] and events[0].details["reason"] == "done"
    child = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"]
    assert child["emancipated"] is True and child["status"] == "accepted"


async def test_revoking_twice_is_409_and_unknown_is_404(client, runtime):
    headers = await operator_headers(runtime)
    await accepted_child(client, headers)
    [grant] = await grants(client, headers)
    await client.post(f"{GRANTS}/{grant['id']}/revoke", headers=headers)

    again = await client.post(f"{GRANTS}/{grant['id']}/revoke", headers=headers)
    unknown = await client.post(f"{GRANTS}/00000000-0000-0000-0000-000000000000/revoke", headers=headers)

    assert again.status_code == 409 and again.json()["code"] == "ALREADY_REVOKED"
    assert unknown.status_code == 404


async def test_a_viewer_lists_but_cannot_revoke(client, runtime):
    headers = await operator_headers(runtime)
    await accepted_child(client, headers)
    viewer = await operator_headers(runtime, VIEWER_PERMISSIONS)
    [grant] = await grants(client, viewer)

    response = await client.post(f"{GRANTS}/{grant['id']}/revoke", headers=viewer)

    assert response.status_code == 403


async def test_an_expired_grant_reads_as_expired(client, runtime):
    headers = await operator_headers(runtime)
    await accepted_child(client, headers)
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(update(FederationGrant).values(expires_at=utcnow() - timedelta(minutes=1)))

    [grant] = await grants(client, headers, state="expired")

    assert grant["state"] == "expired" and await grants(client, headers, state="active") == []


async def test_a_parent_whose_grant_is_revoked_cannot_get_a_new_one_by_accepting_again(client, runtime):
    headers = await operator_headers(runtime)
    _, csr = make_csr()
    _, body, first = await accepted_child(client, headers, csr=csr)
    [grant] = await grants(client, headers)
    await client.post(f"{GRANTS}/{grant['id']}/revoke", headers=headers)

    retry = await client.post(ACCEPT, json=body)

    assert first["grant"]["bearer_token"] and retry.status_code == 200
    assert "grant" not in retry.json()["data"]
    assert [g["id"] for g in await grants(client, headers)] == [grant["id"]]


async def test_each_state_filter_lists_exactly_the_grants_in_that_state(client, runtime):
    """Archived wins over revoked, revoked over expired: the filter agrees with the state shown."""
    headers = await operator_headers(runtime)
    now, day = utcnow(), timedelta(days=1)
    kinds = {
        "active": {"expires_at": now + day},
        "expired": {"expires_at": now - day},
        "revoked": {"expires_at": now + day, "revoked_at": now},
        "revoked, also expired": {"expires_at": now - day, "revoked_at": now - 2 * day},
        "archived": {"expires_at": now - day, "revoked_at": now - 2 * day, "archived_at": now},
        "archived, never revoked": {"expires_at": now + day, "archived_at": now},
    }
    async with runtime.sessionmaker() as session, session.begin():
        peers = {
            kind: FederationPeer(name=kind, spawn_role="parent", spawn_mode="managed_child") for kind in kinds
        }
        session.add_all(peers.values())
        await session.flush()
        rows = {
            kind: FederationGrant(
                peer_id=peers[kind].id,
                direction="granted",
                resource_kind="managed_child_operator",
                remote_subject="s",
                permission_scopes=["read"],
                **timestamps,
            )
            for kind, timestamps in kinds.items()
        }
        session.add_all(rows.values())
    ids = {kind: str(row.id) for kind, row in rows.items()}

    listed = {
        state: await grants(client, headers, state=state)
        for state in ("active", "expired", "revoked", "archived")
    }

    assert {state: sorted(g["id"] for g in found) for state, found in listed.items()} == {
        "active": [ids["active"]],
        "expired": [ids["expired"]],
        "revoked": sorted([ids["revoked"], ids["revoked, also expired"]]),
        "archived": sorted([ids["archived"], ids["archived, never revoked"]]),
    }
    assert all(g["state"] == state for state, found in listed.items() for g in found)

"""Children API: list with filters and keyset pagination, show, rotate_token, revoke."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update

from hub.database import utcnow
from hub.federation.peers.models import FederationPeer
from hub.provisioning.models import NodeInstance
from shared_contract.payload import read_fw_cfg_tree
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn


async def test_list_filters_and_paginates_newest_first(client, runtime):
    headers = await operator_headers(runtime)
    made = [
        await spawn(client, headers, mode)
        for mode in ("managed_child", "autonomous_peer", "managed_child", "cluster_member", "managed_child")
    ]
    accepted = made[0]["child"]["id"]
    await client.post(ACCEPT, json={"acceptance_token": made[0]["acceptance_token"], "contract_version": 1})

    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(CHILDREN, params=params, headers=headers)).json()
        assert page["success"] and page["meta"]["limit"] == 2
        assert page["data"]["count"] == len(page["data"]["children"]) <= 2
        seen += [c["id"] for c in page["data"]["children"]]
        cursor = page["meta"]["next_cursor"]
        if not cursor:
            break
    assert seen == [m["child"]["id"] for m in reversed(made)]

    managed = (await client.get(CHILDREN, params={"spawn_mode": "managed_child"}, headers=headers)).json()
    assert {c["spawn_mode"] for c in managed["data"]["children"]} == {"managed_child"}
    assert managed["data"]["count"] == 3
    by_status = (await client.get(CHILDREN, params={"status": "accepted,active"}, headers=headers)).json()
    assert [c["id"] for c in by_status["data"]["children"]] == [accepted]
    summary = by_status["data"]["children"][0]
    for key in (
        "id",
        "remote_instance_url",
        "spawn_mode",
        "status",
        "created_at",
        "last_heartbeat_at",
        "acceptance_pending",
        "acceptance_expires_at",
    ):
        assert key in summary
    assert summary["acceptance_pending"] is False


async def test_list_rejects_unknown_filters(client, runtime):
    headers = await operator_headers(runtime)
    bad_status = await client.get(CHILDREN, params={"status": "sleeping"}, headers=headers)
    bad_mode = await client.get(CHILDREN, params={"spawn_mode": "nope"}, headers=headers)
    bad_cursor = await client.get(CHILDREN, params={"cursor": "garbage!"}, headers=headers)
    assert [r.status_code for r in (bad_status, bad_mode, bad_cursor)] == [400, 400, 400]


async def test_show_unknown_child_is_404(client, runtime):
    headers = await operator_headers(runtime)
    for child_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await client.get(f"{CHILDREN}/{child_id}", headers=headers)
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"


async def test_rotate_token_restages_the_payload_and_only_while_proposed(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    child_id = data["child"]["id"]

    rotated = await client.post(f"{CHILDREN}/{child_id}/rotate_token", headers=headers)

    assert rotated.status_code == 200
    new_token = rotated.json()["data"]["acceptance_token"]
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, child_id)
        node = await session.get(NodeInstance, peer.node_instance_id)
    staged = read_fw_cfg_tree(Path(node.details["fw_cfg_files"][0]).parent.parent / "by_name")
    assert staged.acceptance_token == new_token != data["acceptance_token"]
    accept = await client.post(ACCEPT, json={"acceptance_token": new_token, "contract_version": 1})
    assert accept.status_code == 200
    async with runtime.sessionmaker() as session:  # the child went on: it enrolled
        await session.execute(
            update(FederationPeer)
            .where(FederationPeer.id == child_id)
            .values(status="enrolled", enrolled_at=utcnow())
        )
        await session.commit()
    again = await client.post(f"{CHILDREN}/{child_id}/rotate_token", headers=headers)
    assert again.status_code == 409 and "only be rotated while proposed" in again.json()["error"]


async def test_revoke_kills_the_token_and_is_audited(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    child_id = data["child"]["id"]

    response = await client.post(f"{CHILDREN}/{child_id}/revoke", headers=headers, json={"reason": "test"})

    assert response.status_code == 200
    async with runtime.sessionmaker() as session:
        peer = await session.scalar(select(FederationPeer).where(FederationPeer.id == child_id))
    assert peer.status == "revoked" and peer.revoke_reason == "test" and peer.revoked_at
    detail = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"]
    assert detail["acceptance_pending"] is False and detail["status"] == "revoked"

"""Issue 11 #8: operator tokens have a lifecycle (list without secrets, revoke, expiry, last use),
over the API and `powernode-hub operator-token list|revoke`, against a real serve."""

from __future__ import annotations

import json
import uuid

import asyncpg

from tests.hub.edge.conftest import _mint
from tests.hub.helpers import CHILDREN

TOKENS = "/api/v1/system/operator_tokens"


def _get_children(edge_hub, token: str):
    with edge_hub.http() as http:
        return http.get(CHILDREN, headers={"Authorization": f"Bearer {token}"})


async def test_list_revoke_and_expiry_over_the_cli_and_the_api(edge_hub):
    stolen = _mint(edge_hub, "laptop", "viewer")
    expiring = _mint(edge_hub, "ci", "viewer")
    assert _get_children(edge_hub, stolen).status_code == 200

    listed = edge_hub.cli("operator-token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["laptop"]["state"] == "active" and rows["laptop"]["last_used_at"] is not None
    assert rows["ci"]["last_used_at"] is None
    assert stolen not in listed.stdout and stolen.rsplit("_", 1)[-1] not in listed.stdout
    assert "hash" not in listed.stdout
    table = edge_hub.cli("operator-token", "list")
    assert "laptop" in table.stdout and "LAST_USED_AT" in table.stdout

    revoked = edge_hub.cli("operator-token", "revoke", rows["laptop"]["id"])
    again = edge_hub.cli("operator-token", "revoke", rows["laptop"]["id"])
    assert revoked.returncode == 0 and "Revoked operator token" in revoked.stdout
    assert again.returncode == 1 and "already revoked" in again.stderr

    connection = await asyncpg.connect(edge_hub.database_url)
    try:
        await connection.execute(
            "UPDATE operator_token SET expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(rows["ci"]["id"]),
        )
    finally:
        await connection.close()

    after_revoke = _get_children(edge_hub, stolen)
    after_expiry = _get_children(edge_hub, expiring)
    unknown = _get_children(edge_hub, "pnop_nothing_here")
    assert after_revoke.status_code == after_expiry.status_code == unknown.status_code == 401
    assert after_revoke.json() == after_expiry.json() == unknown.json()
    with edge_hub.http() as http:
        states = {
            t["name"]: t["state"]
            for t in http.get(TOKENS, headers=edge_hub.operator()).json()["data"]["tokens"]
        }
        viewer_may_not = http.get(TOKENS, headers={"Authorization": f"Bearer {edge_hub.viewer_token}"})
    assert states["laptop"] == "revoked" and states["ci"] == "expired"
    assert viewer_may_not.status_code == 403


def test_a_token_minted_with_an_expiry_carries_it(edge_hub):
    done = edge_hub.cli(
        "operator-token", "create", "--name", "short", "--role", "viewer", "--expires-in-days", "2"
    )
    bad = edge_hub.cli(
        "operator-token", "create", "--name", "x", "--role", "viewer", "--expires-in-days", "0"
    )

    assert done.returncode == 0, done.stderr
    listed = json.loads(edge_hub.cli("operator-token", "list", "--json").stdout)
    assert [t["expires_at"] is not None for t in listed if t["name"] == "short"] == [True]
    assert bad.returncode == 1 and "expires_in_days must be 1-3650" in bad.stderr

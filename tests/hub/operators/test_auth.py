"""Operator API authentication: 401 without a valid token, 403 without the permission."""

from __future__ import annotations

from sqlalchemy import select

from hub.operators.models import OperatorToken
from hub.operators.permissions import CHILDREN_READ
from tests.hub.helpers import CHILDREN, SPAWN, operator_headers, spawn_body


async def test_no_token_is_401(client):
    response = await client.get(CHILDREN)
    assert response.status_code == 401
    assert response.json() == {
        "success": False,
        "error": "Missing operator token (Authorization: Bearer <token>)",
        "code": "UNAUTHORIZED",
    }


async def test_wrong_token_is_401(client, runtime):
    good = await operator_headers(runtime)
    forged = good["Authorization"][:-4] + "AAAA"
    for header in (forged, "Bearer pnop_nope_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "Basic abc"):
        response = await client.get(CHILDREN, headers={"Authorization": header})
        assert response.status_code == 401


async def test_missing_permission_is_403(client, runtime):
    reader = await operator_headers(runtime, [CHILDREN_READ])
    assert (await client.get(CHILDREN, headers=reader)).status_code == 200
    response = await client.post(SPAWN, json=spawn_body(), headers=reader)
    assert response.status_code == 403
    assert "system.children.spawn" in response.json()["error"]


async def test_operator_tokens_are_stored_hashed(client, runtime):
    headers = await operator_headers(runtime)
    plaintext = headers["Authorization"].split(" ", 1)[1]
    async with runtime.sessionmaker() as session:
        rows = (await session.scalars(select(OperatorToken))).all()
    assert rows and all(plaintext not in (r.token_hash + r.public_id) for r in rows)

"""The children list on the hub's raw path (hub/federation/peers/listing.py) answers as the route does,
and leaves to the route whatever it does not answer itself."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from hub.database import utcnow
from hub.federation.peers import listing
from hub.operators import permissions
from hub.operators.models import OperatorToken
from hub.runtime import HubRuntime
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn


async def raw_answer(runtime: HubRuntime, query: str, headers: dict[str, str]) -> tuple[bool, list[dict]]:
    """What listing.serve_raw sends for `GET CHILDREN?query` (True if it answered at all)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": CHILDREN,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    answered = await listing.serve_raw(runtime, scope, send)
    return answered, sent


async def test_the_raw_path_answers_each_page_as_the_route_does(client, runtime):
    headers = await operator_headers(runtime)
    made = [
        await spawn(client, headers, mode) for mode in ("managed_child", "autonomous_peer", "managed_child")
    ]
    await client.post(ACCEPT, json={"acceptance_token": made[0]["acceptance_token"], "contract_version": 1})
    await client.post(f"{CHILDREN}/{made[1]['child']['id']}/revoke", headers=headers)

    for query in (
        "",
        "limit=2",
        "spawn_mode=managed_child",
        "status=accepted%2Cproposed&limit=1",
        "limit=500",
    ):
        answered, sent = await raw_answer(runtime, query, headers | {"X-Request-ID": "list-raw-1"})
        assert answered, query
        start, body = sent
        assert start["status"] == 200
        assert (b"x-request-id", b"list-raw-1") in start["headers"]
        # `via` is no parameter of this API: the raw path leaves the request to the route, which
        # ignores it, as FastAPI does any unknown query parameter.
        route = await client.get(f"{CHILDREN}?{query}&via=route", headers=headers)
        assert route.status_code == 200
        assert json.loads(body["body"]) == route.json(), query

    first = json.loads((await raw_answer(runtime, "limit=2", headers))[1][1]["body"])
    assert [c["id"] for c in first["data"]["children"]] == [m["child"]["id"] for m in reversed(made)][:2]
    rest = await raw_answer(runtime, f"limit=2&cursor={first['meta']['next_cursor']}", headers)
    last = json.loads(rest[1][1]["body"])
    assert [c["id"] for c in last["data"]["children"]] == [made[0]["child"]["id"]]
    assert last["meta"]["next_cursor"] is None
    assert last["data"]["children"][0]["status"] == "accepted"
    assert last["data"]["children"][0]["acceptance_pending"] is False
    pending = json.loads((await raw_answer(runtime, "status=proposed", headers))[1][1]["body"])
    assert [c["acceptance_pending"] for c in pending["data"]["children"]] == [True]
    assert pending["data"]["children"][0]["acceptance_expires_at"] is not None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", 400),
        ("limit=501", 400),
        ("limit=ten", 400),
        ("limit=05", 200),  # a number, if not in its plainest spelling: the route's to read
        ("limit=1&limit=2", 200),
        ("status=sleeping", 400),
        ("spawn_mode=nope", 400),
        ("spawn_mode=", 400),
        ("cursor=garbage!", 400),
        ("cursor=" + "x" * 201, 400),
    ],
)
async def test_what_the_raw_path_leaves_alone_the_route_answers(client, runtime, query, code):
    headers = await operator_headers(runtime)
    await spawn(client, headers)

    answered, sent = await raw_answer(runtime, query, headers)

    assert (answered, sent) == (False, [])
    response = await client.get(f"{CHILDREN}?{query}", headers=headers)
    assert response.status_code == code
    if code == 400:
        assert response.json()["success"] is False and response.json()["code"] == "VALIDATION_FAILED"


async def test_a_token_that_may_not_read_children_or_is_revoked_gets_the_routes_refusal(client, runtime):
    headers = await operator_headers(runtime, [permissions.GRANTS_READ])
    assert await raw_answer(runtime, "", headers) == (False, [])
    assert (await client.get(CHILDREN, headers=headers)).status_code == 403

    reader = await operator_headers(runtime, [permissions.CHILDREN_READ])
    assert (await raw_answer(runtime, "", reader))[0]
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(update(OperatorToken).values(revoked_at=utcnow()))
    assert await raw_answer(runtime, "", reader) == (False, [])
    refused = await client.get(CHILDREN, headers=reader)
    assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHORIZED"
    for bad in ({}, {"Authorization": "Bearer pnop_nothing"}, {"Authorization": "Basic abc"}):
        assert await raw_answer(runtime, "", bad) == (False, [])
        assert (await client.get(CHILDREN, headers=bad)).status_code == 401


async def test_a_token_records_its_use_at_most_once_a_minute(client, runtime):
    headers = await operator_headers(runtime)

    async def last_used() -> Any:
        async with runtime.sessionmaker() as session:
            return await session.scalar(select(OperatorToken.last_used_at))

    assert await last_used() is None
    assert (await client.get(CHILDREN, headers=headers)).status_code == 200
    first = await last_used()
    assert first is not None
    assert (await client.get("/api/v1/system/federation/findings", headers=headers)).status_code == 200
    assert await last_used() == first  # within the minute: a read stays a read

    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(update(OperatorToken).values(last_used_at=first - timedelta(seconds=61)))
    assert (await client.get(CHILDREN, headers=headers)).status_code == 200
    assert await last_used() > first

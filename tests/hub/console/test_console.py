"""The operator console over HTTP (no browser): sign-in cookie, CSRF, permissions, the token shown
once, API errors in words. The browser flows are in tests/e2e/test_console_browser.py."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select, update

from hub.federation.peers.models import FederationPeer
from hub.operators.models import OperatorToken
from hub.operators.permissions import VIEWER_PERMISSIONS
from tests.hub.helpers import CHILDREN, operator_headers, spawn

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Sign in through the form as a browser would; the page's CSRF value for later forms."""
    login = await client.get("/console/login")
    [nonce] = CSRF.findall(login.text)
    answer = await client.post("/console/login", data={"token": token, "csrf": nonce})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/children"
    page = await client.get("/console/children")
    assert page.status_code == 200
    return CSRF.findall(page.text)[0]


async def children_count(runtime) -> int:
    async with runtime.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(FederationPeer))


async def test_sign_in_keeps_the_token_in_a_strict_httponly_cookie(client, runtime):
    token = bearer(await operator_headers(runtime))
    assert (await client.get("/")).headers["location"] == "/console"
    assert (await client.get("/console/children")).headers["location"] == "/console/login"

    login = await client.get("/console/login")
    [nonce] = CSRF.findall(login.text)
    wrong = await client.post("/console/login", data={"token": "pnop_nope_" + "x" * 30, "csrf": nonce})
    assert wrong.status_code == 401 and "That token was not accepted" in wrong.text
    no_csrf = await client.post("/console/login", data={"token": token})
    assert no_csrf.status_code == 403 and "nothing was done" in no_csrf.text

    [nonce] = CSRF.findall((await client.get("/console/login")).text)
    signed_in = await client.post("/console/login", data={"token": token, "csrf": nonce})
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("pn_console="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/console"} <= attributes
    assert "secure" not in attributes  # plain http here; https requests get Secure

    page = await client.get("/console/children")
    [csrf] = CSRF.findall(page.text)[:1]
    out = await client.post("/console/logout", data={"csrf": csrf})
    assert out.headers["location"].startswith("/console/login")
    assert (await client.get("/console/children")).headers["location"] == "/console/login"


async def test_a_form_without_the_csrf_value_changes_nothing(client, runtime):
    csrf = await sign_in(client, bearer(await operator_headers(runtime)))
    form = {
        "spawn_mode": "managed_child",
        "parent_url": "https://parent.example.test",
        "template_id": "powernode-hub",
        "ttl_days": "7",
    }

    for sent in ({}, {"csrf": "0" * 64}, {"csrf": csrf[:-1] + ("1" if csrf.endswith("0") else "0")}):
        refused = await client.post("/console/children/spawn", data=form | sent)
        assert refused.status_code == 403 and "CSRF" in refused.text

    assert await children_count(runtime) == 0


async def test_a_viewer_sees_no_spawn_or_revoke_and_the_server_refuses_them(client, runtime):
    operator = await operator_headers(runtime)
    made = await spawn(client, operator)
    child_id = made["child"]["id"]
    csrf = await sign_in(client, bearer(await operator_headers(runtime, VIEWER_PERMISSIONS)))

    listing = await client.get("/console/children")
    detail = await client.get(f"/console/children/{child_id}")
    assert made["child"]["name"] in listing.text and "Spawn Platform" not in listing.text
    assert detail.status_code == 200 and "Revoke" not in detail.text and "Rotate token" not in detail.text

    form = {
        "csrf": csrf,
        "spawn_mode": "managed_child",
        "parent_url": "https://parent.example.test",
        "template_id": "powernode-hub",
        "ttl_days": "7",
    }
    forged_spawn = await client.post("/console/children/spawn", data=form)
    forged_revoke = await client.post(
        f"/console/children/{child_id}/revoke", data={"csrf": csrf, "confirm": "yes"}
    )

    assert (
        forged_spawn.status_code == 403 and "lacks the system.children.spawn permission" in forged_spawn.text
    )
    assert (
        forged_revoke.status_code == 403
        and "lacks the system.children.manage permission" in forged_revoke.text
    )
    assert await children_count(runtime) == 1
    shown = (await client.get(CHILDREN + f"/{child_id}", headers=operator)).json()["data"]["child"]
    assert shown["status"] == "proposed"


async def test_the_token_is_shown_once_and_never_again(client, runtime):
    csrf = await sign_in(client, bearer(await operator_headers(runtime)))
    form = {
        "csrf": csrf,
        "spawn_mode": "managed_child",
        "parent_url": "https://parent.example.test",
        "template_id": "powernode-hub",
        "region": "eu-west",
        "ttl_days": "3",
        "name": "sandbox-1",
    }

    spawned = await client.post("/console/children/spawn", data=form)
    [token] = re.findall(r'id="acceptance-token"[^>]*>([^<]+)<', spawned.text)
    assert spawned.status_code == 201 and token.startswith("pnat_")
    assert spawned.headers["cache-control"] == "no-store"
    assert "ONLY opportunity" in spawned.text

    [child_id] = re.findall(r'data-child-id="([^"]+)"', spawned.text)
    later = [
        await client.get(p)
        for p in ("/console/children", f"/console/children/{child_id}", "/console/children/rows", "/console")
    ]
    assert all(page.status_code == 200 and token not in page.text for page in later)
    assert "sandbox-1" in later[0].text and "eu-west" in later[1].text


async def test_api_errors_are_shown_in_words(client, runtime):
    csrf = await sign_in(client, bearer(await operator_headers(runtime)))
    form = {
        "csrf": csrf,
        "spawn_mode": "cluster_member",
        "parent_url": "https://parent.example.test",
        "template_id": "powernode-hub",
        "ttl_days": "7",
    }

    mismatch = await client.post("/console/children/spawn", data=form)
    bad_ttl = await client.post("/console/children/spawn", data=form | {"ttl_days": "31"})
    missing = await client.get("/console/children/00000000-0000-0000-0000-000000000000")

    assert (
        mismatch.status_code == 422 and "powernode-hub" in mismatch.text and '"success"' not in mismatch.text
    )
    assert bad_ttl.status_code == 400 and "from 1 to 30" in bad_ttl.text
    assert missing.status_code == 404 and "no longer exists" in missing.text
    assert await children_count(runtime) == 0


async def test_a_revoked_operator_token_ends_its_console_session(client, runtime):
    headers = await operator_headers(runtime)
    await sign_in(client, bearer(headers))
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(update(OperatorToken).values(revoked_at=func.now()))

    page = await client.get("/console/children")
    rows = await client.get("/console/children/rows")

    assert page.status_code == 303 and page.headers["location"] == "/console/login?expired=1"
    assert rows.status_code == 401


async def test_the_audit_trail_of_a_child(client, runtime):
    headers = await operator_headers(runtime)
    made = await spawn(client, headers)
    child_id = made["child"]["id"]
    await client.post(f"{CHILDREN}/{child_id}/revoke", json={"reason": "done"}, headers=headers)

    events = await client.get("/api/v1/system/audit_events", params={"target": child_id}, headers=headers)
    anonymous = await client.get("/api/v1/system/audit_events")

    assert [e["action"] for e in events.json()["data"]["events"]][:2] == ["child.revoke", "child.spawn"]
    assert anonymous.status_code == 401 and anonymous.json()["success"] is False

"""A child checks every call its parent makes under the grant: certificate, bearer, live grant,
scope and allowlists (emancipation is the child revoking that grant)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from hub.audit.models import AuditEvent
from hub.database import utcnow
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import FederationPeer
from hub.main import create_app
from tests.hub.grants.child_side import FEDERATION_API, become_child, new_ca, with_client_certificate
from tests.hub.helpers import operator_headers

PEER = f"{FEDERATION_API}/peer"
POLICIES = f"{FEDERATION_API}/intervention_policies"
AUDIT = f"{FEDERATION_API}/audit_events"
GRANTS = "/api/v1/system/federation/grants"
PUSH = {"generated_at": "2025-01-01T00:00:00+00:00", "policies": []}


@pytest.fixture
async def parent(runtime, tmp_path):
    return await become_child(runtime, tmp_path)


async def set_grant(runtime, parent, **values):
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(FederationGrant).where(FederationGrant.peer_id == parent.row_id).values(**values)
        )


async def test_the_parent_reads_us_with_its_certificate_and_bearer(client, parent):
    response = await client.get(PEER, headers=parent.headers())

    assert response.status_code == 200, response.text
    peer = response.json()["data"]["peer"]
    assert peer["id"] == str(parent.row_id) and peer["spawn_role"] == "child"
    assert [g["direction"] for g in peer["grants"]] == ["granted"]


@pytest.mark.parametrize(
    ("bearer", "code"),
    [
        (None, "GRANT_REQUIRED"),
        ("pngb_abcdefabcdef_" + "x" * 43, "GRANT_REVOKED"),
        ("nonsense", "GRANT_REVOKED"),
    ],
)
async def test_without_the_recorded_bearer_the_parent_gets_401(client, parent, bearer, code):
    response = await client.get(PEER, headers=parent.headers(bearer=bearer))

    assert response.status_code == 401 and response.json()["code"] == code


async def test_emancipation_the_child_revokes_and_the_parents_next_call_is_401(client, runtime, parent):
    operator = await operator_headers(runtime)
    [grant] = (await client.get(GRANTS, headers=operator, params={"direction": "granted"})).json()["data"][
        "grants"
    ]

    revoked = await client.post(
        f"{GRANTS}/{grant['id']}/revoke", headers=operator, json={"reason": "mine now"}
    )
    after = await client.get(PEER, headers=parent.headers())
    push = await client.put(POLICIES, headers=parent.headers(), json=PUSH)

    assert revoked.status_code == 200 and revoked.json()["data"]["grant"]["state"] == "revoked"
    assert after.status_code == 401 and after.json()["code"] == "GRANT_REVOKED"
    assert push.status_code == 401
    assert (await client.get(PEER, headers=parent.headers(bearer=None))).status_code == 401


async def test_an_expired_grant_is_401_expired(client, runtime, parent):
    await set_grant(runtime, parent, expires_at=utcnow() - timedelta(seconds=1))

    response = await client.get(PEER, headers=parent.headers())

    assert response.status_code == 401 and response.json()["code"] == "GRANT_EXPIRED"


async def test_scope_read_for_get_write_for_put_admin_for_the_audit_trail(client, runtime, parent):
    await set_grant(runtime, parent, permission_scopes=["read"])

    get = await client.get(POLICIES, headers=parent.headers())
    put = await client.put(POLICIES, headers=parent.headers(), json=PUSH)
    audit = await client.get(AUDIT, headers=parent.headers())
    await set_grant(runtime, parent, permission_scopes=["read", "write", "admin"])
    audit_as_admin = await client.get(AUDIT, headers=parent.headers())

    assert get.status_code == 200
    assert put.status_code == 403 and put.json()["code"] == "GRANT_DENIED"
    assert audit.status_code == 403
    assert audit_as_admin.status_code == 200
    assert "peer.bootstrap" in [e["action"] for e in audit_as_admin.json()["data"]["events"]]


async def test_the_parent_reads_our_newest_audit_events_first_as_many_as_it_asks(client, runtime, parent):
    await set_grant(runtime, parent, permission_scopes=["read", "write", "admin"])
    async with runtime.sessionmaker() as session, session.begin():
        for n in range(3):
            session.add(
                AuditEvent(
                    actor=f"operator:{n}",
                    action="test.step",
                    target=f"thing:{n}",
                    outcome="denied",
                    details={"n": n},
                )
            )
    async with runtime.sessionmaker() as session:
        newest = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(2))).all()

    response = await client.get(AUDIT, headers=parent.headers(), params={"limit": 2})

    assert response.status_code == 200, response.text
    assert response.json()["data"]["events"] == [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "outcome": e.outcome,
            "details": e.details,
        }
        for e in newest
    ]
    assert [e["target"] for e in response.json()["data"]["events"]] == ["thing:2", "thing:1"]


async def test_a_non_empty_allowlist_admits_only_its_actions(client, runtime, parent):
    await set_grant(runtime, parent, allowlists={"actions": ["system.peer.read"]})

    peer = await client.get(PEER, headers=parent.headers())
    policies = await client.get(POLICIES, headers=parent.headers())
    put = await client.put(POLICIES, headers=parent.headers(), json=PUSH)

    assert peer.status_code == 200
    assert policies.status_code == 403 and put.status_code == 403
    assert "allowlist" in policies.json()["error"]


async def test_an_allowlist_this_hub_cannot_read_denies(client, runtime, parent):
    await set_grant(runtime, parent, allowlists={"regions": ["eu"]})

    response = await client.get(PEER, headers=parent.headers())

    assert response.status_code == 403


async def test_a_certificate_from_the_parents_ca_is_the_parent(settings, runtime, parent, tmp_path):
    stranger = await new_ca(tmp_path / "stranger")
    codes = []
    for pem in (parent.client_certificate(), parent.client_certificate(ca=stranger)):
        transport = httpx.ASGITransport(app=with_client_certificate(create_app(settings, runtime), pem))
        async with httpx.AsyncClient(transport=transport, base_url="https://child.test") as http:
            codes.append((await http.get(PEER, headers=parent.headers())).status_code)

    assert codes == [200, 401]


async def test_without_the_parents_ca_file_no_certificate_is_the_parent(settings, runtime, parent, tmp_path):
    """Fail closed: a CA chain we can no longer read verifies nothing."""
    (tmp_path / "parent" / "ca" / "ca.crt").unlink()
    transport = httpx.ASGITransport(
        app=with_client_certificate(create_app(settings, runtime), parent.client_certificate())
    )
    async with httpx.AsyncClient(transport=transport, base_url="https://child.test") as http:
        response = await http.get(PEER, headers=parent.headers())

    assert response.status_code == 401


async def test_another_cn_is_not_our_parent(client, parent):
    headers = parent.headers() | {"X-Client-S-DN-CN": "fed:00000000-0000-0000-0000-000000000001"}

    response = await client.get(PEER, headers=headers)

    assert response.status_code == 401 and response.json()["code"] == "UNAUTHORIZED"


async def test_a_revoked_peering_is_401_peer_revoked(client, runtime, parent):
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(FederationPeer).where(FederationPeer.id == parent.row_id).values(status="revoked")
        )

    response = await client.get(PEER, headers=parent.headers())

    assert response.status_code == 401 and response.json()["code"] == "PEER_REVOKED"


async def test_an_autonomous_parent_reads_us_by_certificate_but_cannot_push(client, runtime, tmp_path):
    parent = await become_child(runtime, tmp_path, mode="autonomous_peer")

    peer = await client.get(PEER, headers=parent.headers())
    push = await client.put(POLICIES, headers=parent.headers(), json=PUSH)

    assert peer.status_code == 200
    assert push.status_code == 403 and push.json()["code"] == "GRANT_DENIED"


async def test_our_own_certificate_is_never_our_parent(settings, runtime, parent):
    """Issue 11 #16: the certificate the parent issued us names the parent's id for us too."""
    codes = []
    for pem in (parent.client_certificate(), parent.own_certificate()):
        transport = httpx.ASGITransport(app=with_client_certificate(create_app(settings, runtime), pem))
        async with httpx.AsyncClient(transport=transport, base_url="https://child.test") as http:
            codes.append((await http.get(PEER, headers=parent.headers())).status_code)
    own_cn = parent.headers() | {"X-Client-S-DN-CN": f"fed:{parent.parent_peer_id}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, runtime)), base_url="https://child.test"
    ) as http:
        by_proxy = await http.get(PEER, headers=own_cn)

    assert codes == [200, 401]
    assert by_proxy.status_code == 401 and by_proxy.json()["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize("ahead", [timedelta(days=365 * 20), timedelta(minutes=10)])
async def test_a_cascade_dated_in_the_future_is_refused_and_changes_nothing(client, runtime, parent, ahead):
    """Issue 11 #16: a push dated ahead would make every honest push after it look stale."""
    future = {"generated_at": (utcnow() + ahead).isoformat(), "policies": []}

    refused = await client.put(POLICIES, headers=parent.headers(), json=future)
    honest = await client.put(
        POLICIES, headers=parent.headers(), json={"generated_at": utcnow().isoformat(), "policies": []}
    )

    assert refused.status_code == 422 and refused.json()["code"] == "CASCADE_FROM_THE_FUTURE"
    assert honest.status_code == 200 and honest.json()["data"]["stale"] is False


async def test_a_cascade_within_the_clock_skew_is_taken(client, parent):
    body = {"generated_at": (utcnow() + timedelta(minutes=2)).isoformat(), "policies": []}

    response = await client.put(POLICIES, headers=parent.headers(), json=body)

    assert response.status_code == 200 and response.json()["data"]["stale"] is False

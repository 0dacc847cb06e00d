"""Accept, as the original agent and our agent call it: single use, no oracle, key-bound retry."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

import pytest
from cryptography import x509
from sqlalchemy import func, select, update

from hub.audit.models import AuditEvent
from hub.database import utcnow
from hub.federation.accept import service as accept_service
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from tests.hub.helpers import ACCEPT, CHILDREN, make_csr, operator_headers, spawn

NOT_RECOGNIZED = {
    "success": False,
    "error": "acceptance_token not recognized or expired",
    "code": "UNAUTHORIZED",
}


async def test_the_original_go_agent_request_gets_the_original_response(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "autonomous_peer")

    response = await client.post(
        ACCEPT,
        json={"acceptance_token": data["acceptance_token"], "contract_version": 1},
        headers={"User-Agent": "powernode-agent/federation"},
    )

    assert response.status_code == 200
    body = response.json()["data"]
    for key in ("peer_id", "status", "accepted_at", "handshake_at"):
        assert isinstance(body[key], str)
    assert isinstance(body["contract_version_agreed"], int) and body["contract_version_agreed"] == 1
    assert body["peer_id"] == data["child"]["id"] and body["status"] == "accepted"
    assert body["peer_kind"] == "platform"


async def test_token_is_single_use_under_50_concurrent_accepts(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}

    responses = await asyncio.gather(*(client.post(ACCEPT, json=body) for _ in range(50)))

    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(401) == 49
    async with runtime.sessionmaker() as session:
        grants = await session.scalar(select(func.count()).select_from(FederationGrant))
    assert grants == 1


async def test_managed_child_grant_has_the_wire_compat_fields(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    peer_id = data["child"]["id"]

    response = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )

    assert response.status_code == 200
    async with runtime.sessionmaker() as session:
        [grant] = (await session.scalars(select(FederationGrant))).all()
    assert grant.direction == "held"
    assert grant.resource_kind == "managed_child_operator"
    assert grant.permission_scopes == ["read", "write", "admin"]
    assert grant.remote_subject == f"parent-operator@{peer_id}"
    assert grant.allowlists == {}
    assert grant.metadata_ == {
        "auto_issued_by": "managed_child_accept_cascade",
        "spawn_mode": "managed_child",
        "spawn_role": "parent",
    }
    ttl = grant.expires_at - grant.created_at
    assert timedelta(days=364, hours=23) < ttl <= timedelta(days=365, minutes=1)
    assert grant.state() == "active" and grant.bearer_hash is None and grant.bearer_secret_ref
    bearer = response.json()["data"]["grant"]["bearer_token"]
    assert bearer and bearer not in str(grant.bearer_secret_ref)
    detail = (await client.get(f"{CHILDREN}/{peer_id}", headers=headers)).json()["data"]["child"]
    assert [g["resource_kind"] for g in detail["grants"]] == ["managed_child_operator"]


async def test_an_accept_refused_for_a_live_grant_leaves_nothing_behind(client, runtime):
    """Consuming the token, accepting the peer, its grant and the audit event are one: when the
    grant cannot be made (409), the token is not used up and the peer is still proposed."""
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    peer_id = data["child"]["id"]
    async with runtime.sessionmaker() as session, session.begin():
        existing = FederationGrant(
            peer_id=peer_id,
            direction="held",
            resource_kind="managed_child_operator",
            remote_subject="someone-else",
            permission_scopes=["read"],
            expires_at=utcnow() + timedelta(days=1),
        )
        session.add(existing)
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": make_csr()[1]}

    refused = await client.post(ACCEPT, json=body)

    assert refused.status_code == 409 and refused.json()["code"] == "GRANT_EXISTS"
    async with runtime.sessionmaker() as session:
        token = await session.scalar(select(AcceptanceToken).where(AcceptanceToken.peer_id == peer_id))
        peer = await session.get(FederationPeer, peer_id)
        events = await session.scalar(select(func.count()).select_from(AuditEvent))
        accepts = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "child.accept")
        )
    assert token is not None and token.consumed_at is None and token.consumed_by is None
    assert peer is not None and peer.status == "proposed" and peer.client_cert_fingerprint is None
    assert events >= 1 and accepts == 0
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(FederationGrant).where(FederationGrant.id == existing.id).values(revoked_at=utcnow())
        )
    accepted = await client.post(ACCEPT, json=body)
    assert accepted.status_code == 200 and accepted.json()["data"]["grant"]["bearer_token"]


@pytest.mark.parametrize("mode", ["autonomous_peer", "cluster_member"])
async def test_no_grant_for_the_other_modes(client, runtime, mode):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, mode)
    response = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )
    assert response.status_code == 200 and "grant" not in response.json()["data"]
    async with runtime.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(FederationGrant)) == 0


async def test_unknown_wrong_expired_rotated_and_reused_tokens_share_one_401(client, runtime):
    headers = await operator_headers(runtime)
    used = await spawn(client, headers)
    assert (
        await client.post(ACCEPT, json={"acceptance_token": used["acceptance_token"], "contract_version": 1})
    ).status_code == 200
    expired = await spawn(client, headers)
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(AcceptanceToken)
            .where(AcceptanceToken.peer_id == expired["child"]["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    rotated = await spawn(client, headers)
    rotate = await client.post(f"{CHILDREN}/{rotated['child']['id']}/rotate_token", headers=headers)
    assert (
        rotate.status_code == 200 and rotate.json()["data"]["acceptance_token"] != rotated["acceptance_token"]
    )
    wrong = used["acceptance_token"][:-6] + "AAAAAA"

    candidates = [
        "pnat_unknown_" + "x" * 43,
        "not-even-a-token",
        wrong,
        expired["acceptance_token"],
        rotated["acceptance_token"],
        used["acceptance_token"],
    ]
    for token in candidates:
        response = await client.post(ACCEPT, json={"acceptance_token": token, "contract_version": 1})
        assert (response.status_code, response.json()) == (401, NOT_RECOGNIZED), token[:8]

    fresh = rotate.json()["data"]["acceptance_token"]
    ok = await client.post(ACCEPT, json={"acceptance_token": fresh, "contract_version": 1})
    assert ok.status_code == 200


async def test_same_key_retry_is_answered_again_another_key_gets_409(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    _, csr = make_csr()
    _, other_csr = make_csr()
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": csr}

    first = await client.post(ACCEPT, json=body)
    retry = await client.post(ACCEPT, json=body)
    other = await client.post(ACCEPT, json=body | {"csr_pem": other_csr})
    keyless = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )

    assert first.status_code == 200 and retry.status_code == 200
    a, b = first.json()["data"], retry.json()["data"]
    assert (a["peer_id"], a["status"], a["accepted_at"]) == (b["peer_id"], b["status"], b["accepted_at"])
    assert a["grant"]["id"] == b["grant"]["id"] and a["grant"]["bearer_token"] == b["grant"]["bearer_token"]
    cert = x509.load_pem_x509_certificate(b["client_cert_pem"].encode())
    assert cert.subject.rfc4514_string() == f"CN=fed:{a['peer_id']}"
    assert b["ca_chain_pem"] == runtime.ca.chain_pem
    assert other.status_code == 409 and other.json()["code"] == "TOKEN_KEY_MISMATCH"
    assert keyless.status_code == 401
    async with runtime.sessionmaker() as session:
        peer = await session.get(FederationPeer, a["peer_id"])
        grants = await session.scalar(select(func.count()).select_from(FederationGrant))
    assert peer.client_cert_fingerprint == b["client_cert_fingerprint"] and grants == 1


async def test_only_the_token_itself_unrotated_and_the_key_that_used_it_get_the_answer_again(
    client, runtime
):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    token = data["acceptance_token"]
    _, csr = make_csr()
    _, other_csr = make_csr()
    body = {"acceptance_token": token, "contract_version": 1, "csr_pem": csr}
    assert (await client.post(ACCEPT, json=body)).status_code == 200

    prefix, public_id, secret = token.split("_", 2)
    forged = f"{prefix}_{public_id}_{'A' * len(secret)}"  # the public id is no secret
    wrong_secret = await client.post(ACCEPT, json=body | {"acceptance_token": forged})
    other_key = await client.post(ACCEPT, json=body | {"csr_pem": other_csr})
    rotated = await client.post(f"{CHILDREN}/{data['child']['id']}/rotate_token", headers=headers)
    stale = await client.post(ACCEPT, json=body)  # the same key, with the token the rotate killed

    assert wrong_secret.status_code == 401 and wrong_secret.json() == NOT_RECOGNIZED
    assert other_key.status_code == 409
    assert other_key.json()["error"] == "acceptance_token was already redeemed with a different key"
    assert rotated.status_code == 200
    assert stale.status_code == 401 and stale.json() == NOT_RECOGNIZED


async def test_a_token_accepted_without_a_key_is_answered_again_to_no_key(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "autonomous_peer")
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}
    assert (await client.post(ACCEPT, json=body)).status_code == 200

    with_key = await client.post(ACCEPT, json=body | {"csr_pem": make_csr()[1]})
    without = await client.post(ACCEPT, json=body)

    assert with_key.status_code == 401 and with_key.json() == NOT_RECOGNIZED
    assert without.status_code == 401 and without.json() == NOT_RECOGNIZED


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"acceptance_token": "", "contract_version": 1}, "acceptance_token is required"),
        ({"acceptance_token": "   ", "contract_version": 1}, "acceptance_token is required"),
        (
            {"acceptance_token": "pnat_x_y", "contract_version": 99},
            "Unsupported contract_version 99; supported: [1]",
        ),
        ({"contract_version": 1}, "invalid accept request"),
        (
            {"acceptance_token": "pnat_x_y", "contract_version": 1, "csr_pem": "not a csr"},
            "csr_pem is not a PEM certificate signing request",
        ),
    ],
)
async def test_bad_requests_are_422(client, body, message):
    response = await client.post(ACCEPT, json=body)
    assert response.status_code == 422
    assert response.json()["success"] is False and message in response.json()["error"]


async def test_non_json_body_is_422(client):
    response = await client.post(ACCEPT, content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["success"] is False


async def test_revoked_child_cannot_accept(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    revoke = await client.post(
        f"{CHILDREN}/{data['child']['id']}/revoke", headers=headers, json={"reason": "changed my mind"}
    )
    assert revoke.status_code == 200 and revoke.json()["data"]["child"]["status"] == "revoked"

    response = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1}
    )

    assert response.status_code == 401 and response.json() == NOT_RECOGNIZED
    again = await client.post(f"{CHILDREN}/{data['child']['id']}/revoke", headers=headers)
    assert again.status_code == 409


async def test_a_live_token_whose_child_moved_on_is_422_and_stays_usable(client, runtime):
    """A child that left `proposed` by another way (here: suspended) cannot be accepted, and its
    token is not used up by trying: once the child is proposed again, the same token accepts."""
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "autonomous_peer")
    child_id = uuid.UUID(data["child"]["id"])

    async def set_status(status: str) -> None:
        async with runtime.sessionmaker() as session, session.begin():
            await session.execute(
                update(FederationPeer).where(FederationPeer.id == child_id).values(status=status)
            )

    await set_status("suspended")
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}
    refused = await client.post(ACCEPT, json=body)

    assert refused.status_code == 422 and refused.json()["code"] == "INVALID_TRANSITION"
    async with runtime.sessionmaker() as session:
        token = await session.scalar(select(AcceptanceToken).where(AcceptanceToken.peer_id == child_id))
        assert token is not None and token.consumed_at is None and token.consumed_by is None
    await set_status("proposed")
    accepted = await client.post(ACCEPT, json=body)
    assert accepted.status_code == 200 and accepted.json()["data"]["status"] == "accepted"


async def test_accept_is_audited_with_the_public_id_only(client, runtime):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers)
    token = data["acceptance_token"]
    await client.post(ACCEPT, json={"acceptance_token": token, "contract_version": 1})
    async with runtime.sessionmaker() as session:
        [event] = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "child.accept"))).all()
    assert event.details["token_public_id"] == token.split("_")[1]
    assert token not in str(event.details)


async def test_no_secret_in_logs_or_error_bodies(client, runtime, caplog):
    caplog.set_level(logging.DEBUG)
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    token = data["acceptance_token"]
    _, csr = make_csr()
    bodies = []
    for body in (
        {"acceptance_token": token, "contract_version": 99},
        {"acceptance_token": token, "contract_version": 1, "csr_pem": csr},
        {"acceptance_token": token, "contract_version": 1, "csr_pem": make_csr()[1]},
        {"acceptance_token": token + "x", "contract_version": 1},
    ):
        response = await client.post(ACCEPT, json=body)
        if response.status_code != 200:
            bodies.append(response.text)
    operator_token = headers["Authorization"].split()[1]
    secrets = [token, operator_token, csr.splitlines()[1]]
    everything = caplog.text + "".join(bodies)
    assert len(bodies) == 3
    for secret in secrets:
        assert secret not in everything


async def test_the_job_for_a_spawn_that_died_deletes_only_a_bearer_nothing_names(client, runtime):
    """A spawn stores its held grant's bearer before its commit; the job left for a spawn that died
    deletes that bearer, and keeps one a spawned child names or a grant row uses."""
    data = await spawn(client, await operator_headers(runtime), "managed_child")
    async with runtime.sessionmaker() as session:
        child = await session.get(FederationPeer, uuid.UUID(data["child"]["id"]))
    named = uuid.UUID(child.metadata_["spawn"]["held_grant_id"])
    orphan = uuid.UUID((await accept_service.prepare_held_grant(runtime))["held_grant_id"])
    granted = uuid.UUID((await accept_service.prepare_held_grant(runtime))["held_grant_id"])
    async with runtime.sessionmaker() as session, session.begin():
        session.add(
            FederationGrant(
                id=granted,
                peer_id=child.id,
                direction="held",
                resource_kind="managed_child_operator",
                remote_subject="s",
                permission_scopes=["read"],
                expires_at=utcnow() + timedelta(days=1),
            )
        )

    outcomes = {
        name: await accept_service.forget_unclaimed_bearer(runtime, grant_id=grant_id)
        for name, grant_id in (("orphan", orphan), ("named", named), ("granted", granted))
    }

    assert outcomes == {"orphan": "deleted", "named": "kept", "granted": "kept"}
    assert await runtime.secrets.get(accept_service.bearer_secret_path(orphan)) is None
    assert await runtime.secrets.get(accept_service.bearer_secret_path(named))
    assert await runtime.secrets.get(accept_service.bearer_secret_path(granted))


async def test_accept_answers_with_the_request_id(client, runtime):
    """Accept is served outside the middleware stack; it still echoes a sane X-Request-ID or mints one."""
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1}

    given = await client.post(ACCEPT, json=body, headers={"X-Request-ID": "accept-42"})
    refused = await client.post(ACCEPT, json={"contract_version": 1}, headers={"X-Request-ID": "bad id"})

    assert given.status_code == 200 and given.headers["x-request-id"] == "accept-42"
    assert refused.status_code == 422 and refused.headers["x-request-id"] not in ("", "bad id")

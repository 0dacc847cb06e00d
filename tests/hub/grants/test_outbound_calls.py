"""Issue 11 #5: what the parent sends a child's advertised endpoint, and what it passes on.

The parent is a real runtime (PostgreSQL, OpenBao); the "child" is a real HTTPS server in this
process, with a certificate from the CA the child pinned at enroll, that misbehaves on purpose:
it redirects the bearer elsewhere, answers megabytes, drips its answer, or pads it with fields no
schema has. Each is refused cleanly, the bearer reaches no one else, and a viewer reading
`/children/{id}/remote/*` never sees the raw body.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from arq import Retry
from sqlalchemy import select, update

from hub.audit.models import AuditEvent
from hub.config import Settings
from hub.federation.findings.models import Finding
from hub.federation.grants.jobs import federation_grant_revoke_notice
from hub.federation.peers.models import FederationPeer
from hub.secrets import ca as ca_service
from hub.supervision.serve import bind_listener
from tests.hub.grants.child_side import new_ca
from tests.hub.helpers import ACCEPT, CHILDREN, make_csr, operator_headers, spawn

API = "/api/v1/system/federation_api"
GRANTS = "/api/v1/system/federation/grants"
BIG = 8 * 1024 * 1024


@dataclass
class Seen:
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)


def rogue_app(seen: Seen, *, elsewhere: str = "") -> Any:
    """The child's federation API as an attacker writes it: the first path segment picks the trick."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        seen.requests.append((scope["path"], (headers.get(b"authorization") or b"").decode() or None))
        trick = scope["path"].split("/")[1]

        async def answer(status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
            start = [(b"content-type", b"application/json"), *(extra or [])]
            await send({"type": "http.response.start", "status": status, "headers": start})
            await send({"type": "http.response.body", "body": body})

        if trick == "redirect":
            await answer(307, b"{}", [(b"location", f"{elsewhere}/steal{scope['path']}".encode())])
        elif trick == "redirect-success":  # a 3xx whose body claims success
            body = json.dumps({"success": True, "data": {"policies": [], "count": 0}}).encode()
            await answer(302, body, [(b"location", f"{elsewhere}/steal".encode())])
        elif trick == "huge":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            chunk = b" " * (1024 * 1024)
            for _ in range(BIG // len(chunk)):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif trick == "slow":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:  # a byte now and then, each well inside any read timeout
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.2)
        elif trick == "padded":
            data = {"policies": [], "count": 0, "raw": "<script>alert(1)</script>"}
            await answer(200, json.dumps({"success": True, "data": data, "html": "<b>hi</b>"}).encode())
        elif trick.startswith("refuse-"):  # the child's own 401 for our grant: refuse-GRANT_REVOKED
            code = trick.removeprefix("refuse-")
            await answer(401, json.dumps({"success": False, "error": "no", "code": code}).encode())
        elif trick == "down":
            await answer(503, json.dumps({"success": False, "error": "down", "code": "UNAVAILABLE"}).encode())
        elif trick == "wrong-shape":
            await answer(200, json.dumps({"success": True, "data": {"policies": "all of them"}}).encode())
        else:
            await answer(200, json.dumps({"success": True, "data": {"policies": [], "count": 0}}).encode())

    return app


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Any:  # the test runner keeps its own SIGINT
        yield


@asynccontextmanager
async def https_server(app: Any, ca: ca_service.FederationCA | None, directory: Path) -> AsyncIterator[str]:
    """`app` on a free port: HTTPS with a certificate from `ca`, or plain HTTP when `ca` is None."""
    options: dict[str, Any] = {}
    if ca is not None:
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = ca.issue_server_cert(["127.0.0.1"], days=1)
        (directory / "server.crt").write_text(cert_pem)
        (directory / "server.key").write_text(key_pem)
        options = {
            "ssl_certfile": str(directory / "server.crt"),
            "ssl_keyfile": str(directory / "server.key"),
        }
    sock = bind_listener("127.0.0.1", 0)
    server = _Server(uvicorn.Config(app, lifespan="off", log_level="warning", **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"{'https' if ca else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
        sock.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    federation = settings.federation.model_copy(update={"call_timeout_seconds": 3.0})
    return settings.model_copy(update={"provisioner": "manual", "federation": federation})


@dataclass
class Rogue:
    child_id: str
    headers: dict[str, str]
    child_ca: ca_service.FederationCA
    base: str  # the rogue child's https URL
    thief: str  # another https server, same CA: where a redirect points
    seen: Seen  # what the rogue child received
    stolen: Seen  # what the thief received
    bearer: str


@pytest.fixture
async def rogue(client, runtime, tmp_path) -> AsyncIterator[Rogue]:
    """A managed child the parent holds a live grant on, enrolled with the rogue's CA."""
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    _, csr = make_csr()
    accepted = await client.post(
        ACCEPT, json={"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": csr}
    )
    assert accepted.status_code == 200, accepted.text
    bearer = accepted.json()["data"]["grant"]["bearer_token"]
    child_ca = await new_ca(tmp_path / "child-ca")
    seen, stolen = Seen(), Seen()
    async with https_server(rogue_app(stolen), child_ca, tmp_path / "thief") as thief:
        app = rogue_app(seen, elsewhere=thief)
        async with https_server(app, child_ca, tmp_path / "rogue") as base:
            rogue = Rogue(data["child"]["id"], headers, child_ca, base, thief, seen, stolen, bearer)
            await advertise(runtime, rogue, base + "/ok")
            yield rogue


async def advertise(runtime, rogue: Rogue, url: str, ca_pem: str | None = None) -> None:
    """What the child told us at enroll (as the enroll endpoint stored it), and that it is live."""
    async with runtime.sessionmaker() as session, session.begin():
        await session.execute(
            update(FederationPeer)
            .where(FederationPeer.id == uuid.UUID(rogue.child_id))
            .values(
                status="active",
                endpoints=[{"url": url, "scope": "federation"}],
                capabilities={"federation_ca_pem": ca_pem or rogue.child_ca.chain_pem},
            )
        )


async def read_policies(client, rogue: Rogue) -> httpx.Response:
    return await client.get(
        f"{CHILDREN}/{rogue.child_id}/remote/intervention_policies", headers=rogue.headers
    )


async def open_findings(runtime, kind: str) -> list[Finding]:
    async with runtime.sessionmaker() as session:
        rows = await session.scalars(
            select(Finding).where(Finding.kind == kind, Finding.resolved_at.is_(None))
        )
        return list(rows.all())


async def test_a_well_behaved_child_is_read_with_the_bearer(client, rogue):
    response = await read_policies(client, rogue)

    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"policies": [], "count": 0}
    assert rogue.seen.requests == [(f"/ok{API}/intervention_policies", f"Bearer {rogue.bearer}")]


@pytest.mark.parametrize("trick", ["redirect", "redirect-success"])
async def test_a_redirect_is_not_followed_and_the_bearer_goes_nowhere_else(client, runtime, rogue, trick):
    await advertise(runtime, rogue, f"{rogue.base}/{trick}")

    response = await read_policies(client, rogue)

    assert response.status_code == 502, response.text
    assert response.json()["code"] == "CHILD_REFUSED"
    assert response.json()["details"]["code"] == "REDIRECT_REFUSED"
    assert len(rogue.seen.requests) == 1 and rogue.stolen.requests == []


async def test_a_certificate_not_from_the_pinned_ca_gets_nothing_and_a_finding(
    client, runtime, rogue, tmp_path
):
    stranger = await new_ca(tmp_path / "stranger")
    await advertise(runtime, rogue, rogue.base + "/ok", ca_pem=stranger.chain_pem)

    response = await read_policies(client, rogue)
    [finding] = await open_findings(runtime, "peer_endpoint_untrusted")

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "CHILD_UNTRUSTED"
    assert response.json()["details"]["code"] == "PEER_TLS_UNTRUSTED"
    assert rogue.seen.requests == []  # the handshake failed: no request, no bearer
    assert str(finding.peer_id) == rogue.child_id
    await advertise(runtime, rogue, rogue.base + "/ok")
    assert (await read_policies(client, rogue)).status_code == 200
    assert await open_findings(runtime, "peer_endpoint_untrusted") == []


async def test_an_http_endpoint_is_never_called(client, runtime, rogue, tmp_path):
    plain = Seen()
    async with https_server(rogue_app(plain), None, tmp_path / "plain") as url:
        await advertise(runtime, rogue, url + "/ok")

        response = await read_policies(client, rogue)

    assert response.status_code == 409 and response.json()["details"]["code"] == "PEER_ENDPOINT_NOT_HTTPS"
    assert plain.requests == []
    assert len(await open_findings(runtime, "peer_endpoint_untrusted")) == 1


@pytest.mark.parametrize("ca_pem", ["not a certificate", "leaf"])
async def test_a_ca_that_is_no_ca_is_refused_before_any_call(client, runtime, rogue, ca_pem):
    if ca_pem == "leaf":
        ca_pem, _ = rogue.child_ca.issue_server_cert(["127.0.0.1"], days=1)
    await advertise(runtime, rogue, rogue.base + "/ok", ca_pem=ca_pem)

    response = await read_policies(client, rogue)

    assert response.status_code == 409 and response.json()["details"]["code"] == "PEER_CA_INVALID"
    assert rogue.seen.requests == []


async def test_a_huge_answer_is_cut_off(client, runtime, rogue):
    await advertise(runtime, rogue, rogue.base + "/huge")

    response = await read_policies(client, rogue)

    assert response.status_code == 502 and response.json()["details"]["code"] == "RESPONSE_TOO_LARGE"
    assert len(response.content) < 1024


async def test_a_slow_answer_is_given_up_on_at_the_deadline(client, runtime, rogue):
    await advertise(runtime, rogue, rogue.base + "/slow")

    response = await read_policies(client, rogue)

    assert response.status_code == 502, response.text
    assert response.json()["code"] == "CHILD_UNREACHABLE" and response.json()["details"]["code"] == "TIMEOUT"


async def test_the_viewer_gets_parsed_data_never_the_raw_body(client, runtime, rogue):
    await advertise(runtime, rogue, rogue.base + "/padded")
    padded = await read_policies(client, rogue)
    await advertise(runtime, rogue, rogue.base + "/wrong-shape")
    wrong = await read_policies(client, rogue)

    assert padded.status_code == 200 and padded.json()["data"] == {"policies": [], "count": 0}
    assert "script" not in padded.text and "<b>" not in padded.text
    assert wrong.status_code == 502 and wrong.json()["details"]["code"] == "INVALID_RESPONSE"
    assert "all of them" not in wrong.text


async def peer_row(runtime, rogue: Rogue) -> FederationPeer:
    async with runtime.sessionmaker() as session:
        return await session.get(FederationPeer, uuid.UUID(rogue.child_id))


async def test_a_child_that_revoked_our_grant_is_emancipated_once_with_a_finding(client, runtime, rogue):
    await advertise(runtime, rogue, rogue.base + "/refuse-GRANT_REVOKED")

    answers = [await read_policies(client, rogue) for _ in range(2)]

    child = await peer_row(runtime, rogue)
    async with runtime.sessionmaker() as session:
        audited = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "peer.emancipated"))
        ).all()
    [finding] = await open_findings(runtime, "peer_grant_revoked")
    assert [a.status_code for a in answers] == [502, 502]
    assert {a.json()["details"]["code"] for a in answers} == {"GRANT_REVOKED"}
    assert child.emancipated_at is not None and child.status == "active"
    assert [(e.actor, e.target) for e in audited] == [(f"peer:{rogue.child_id}", rogue.child_id)]
    assert finding.subject == rogue.child_id and str(finding.peer_id) == rogue.child_id
    assert (
        finding.message
        == f"{child.name} revoked our managed_child_operator grant: it is now an autonomous peer"
    )
    assert finding.details == {"code": "GRANT_REVOKED", "child_said": "the child answered 401"}
    assert await open_findings(runtime, "peer_grant_expired") == []


async def test_a_child_refusing_our_grant_as_expired_is_a_finding_until_it_answers_again(
    client, runtime, rogue
):
    await advertise(runtime, rogue, rogue.base + "/refuse-GRANT_EXPIRED")

    refused = await read_policies(client, rogue)
    [finding] = await open_findings(runtime, "peer_grant_expired")
    await advertise(runtime, rogue, rogue.base + "/ok")
    answered = await read_policies(client, rogue)

    child = await peer_row(runtime, rogue)
    assert refused.status_code == 502 and refused.json()["details"]["code"] == "GRANT_EXPIRED"
    assert finding.subject == rogue.child_id and str(finding.peer_id) == rogue.child_id
    assert finding.message == f"{child.name} refuses our grant as expired"
    assert finding.details == {"code": "GRANT_EXPIRED", "child_said": "the child answered 401"}
    assert child.emancipated_at is None and await open_findings(runtime, "peer_grant_revoked") == []
    assert answered.status_code == 200 and await open_findings(runtime, "peer_grant_expired") == []


async def test_a_revoke_notice_the_child_did_not_get_is_an_error_finding_until_it_is_told(
    client, runtime, rogue
):
    [grant] = (await client.get(GRANTS, headers=rogue.headers, params={"direction": "held"})).json()["data"][
        "grants"
    ]
    revoked = await client.post(f"{GRANTS}/{grant['id']}/revoke", headers=rogue.headers, json={"reason": "x"})
    await advertise(runtime, rogue, rogue.base + "/down")
    job = {"runtime": runtime, "job_try": 1}

    with pytest.raises(Retry):
        await federation_grant_revoke_notice(job, grant_id=grant["id"], peer_id=rogue.child_id)
    [finding] = await open_findings(runtime, "grant_revoke_undelivered")
    await advertise(runtime, rogue, rogue.base + "/ok")
    told = await federation_grant_revoke_notice(job, grant_id=grant["id"], peer_id=rogue.child_id)

    child = await peer_row(runtime, rogue)
    assert revoked.status_code == 200, revoked.text
    assert finding.subject == grant["id"] and str(finding.peer_id) == rogue.child_id
    assert finding.severity == "error"
    assert finding.message.startswith(
        f"{child.name} has not yet been told that grant {grant['id']} was revoked"
    )
    assert finding.details == {"grant_id": grant["id"], "problem": "UNAVAILABLE: the child answered 503"}
    assert told == "told" and await open_findings(runtime, "grant_revoke_undelivered") == []
    assert rogue.seen.requests[-1] == (f"/ok{API}/grants/{grant['id']}/revoke", None)

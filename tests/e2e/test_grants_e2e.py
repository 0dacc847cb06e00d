"""End to end with real hubs: the managed child's grant on both sides, emancipation, policy
cascade by mode, and `peer.revoke!` from either side.

One parent (`powernode-hub serve`, embedded default); its local provisioner boots four children:
a managed_child the parent reads and cascades to, a managed_child that emancipates, an
autonomous_peer that revokes its parent, and a managed_child the parent revokes. Each child is a
whole hub with its own PostgreSQL, Redis and operator API. A test that changes a child for good
has that child to itself, and one that changes the parent's policies removes them again, so the
tests pass alone and in any order.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import wait_until
from hub.localhub import hub_command
from hub.secrets import ca as ca_service
from hub.secrets.store import LocalEncryptedStore, write_private_file
from tests.e2e.hubs import Hub, child_serve_state, hub_env

FEDERATION = "/api/v1/system/federation"
FEDERATION_API = "/api/v1/system/federation_api"
POLICIES = "/api/v1/system/intervention_policies"


@dataclass
class Child:
    """A spawned child hub, seen from outside: the parent's id for it, its own API and database."""

    id: str
    node: Path

    @property
    def data_dir(self) -> Path:
        return self.node / "data"

    @property
    def url(self) -> str:
        return child_serve_state(self.node)["url"]

    @property
    def federation_url(self) -> str:
        return child_serve_state(self.node)["federation_url"]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = (self.data_dir / "operator-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def data(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()["data"]

    def parent_row(self) -> dict[str, Any]:
        [row] = self.data("GET", f"{FEDERATION}/peers", params={"spawn_role": "child"})["peers"]
        return row

    def policies(self) -> list[tuple[str, str, str, bool]]:
        rows = self.data("GET", POLICIES)["policies"]
        return sorted((p["action_pattern"], p["decision"], p["origin"], p["overridden"]) for p in rows)

    def evaluate(self, action: str) -> str:
        return self.data("GET", f"{POLICIES}/evaluate", params={"action": action})["decision"]

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return asyncio.run(_sql(self.data_dir, query, *args))


async def _sql(data_dir: Path, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(PostgresServer(data_dir / "postgres").url("powernode"))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


def data(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()["data"]


def remote(parent: Hub, child: Child, resource: str) -> httpx.Response:
    """The parent's operator reading the child through the parent's grant."""
    return parent.api("GET", f"{FEDERATION}/children/{child.id}/remote/{resource}")


def refusal(response: httpx.Response) -> tuple[int, int | None, str | None]:
    """(our status, the child's status, the child's code) of a call the child refused."""
    details = response.json().get("details") or {}
    return response.status_code, details.get("status"), details.get("code")


def eventually(check: Callable[[], Any], timeout: float = 20) -> None:
    assert wait_until(lambda: bool(check()), timeout, interval=0.2), f"{check} never held"


def federation_endpoint_known(parent: Hub, child_id: str) -> bool:
    return any(e.get("scope") == "federation" for e in parent.child(child_id)["endpoints"])


pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def booted(parent: Hub) -> dict[str, Child]:
    """Four children booted at once; the parent knows where each one's federation API is."""
    spawned = {
        name: parent.spawn(mode)["child"]["id"]
        for name, mode in (
            ("managed", "managed_child"),
            ("emancipating", "managed_child"),
            ("autonomous", "autonomous_peer"),
            ("revoked_by_parent", "managed_child"),
        )
    }
    found = {}
    for name, child_id in spawned.items():
        detail = parent.wait_for(child_id, "active")
        eventually(lambda child_id=child_id: federation_endpoint_known(parent, child_id))
        found[name] = Child(child_id, Path(detail["node_instance"]["details"]["work_dir"]))
    return found


@pytest.fixture(scope="module")
def bearers(parent: Hub, booted: dict[str, Child]) -> list[str]:
    """The plaintext bearer credentials, read from the parent's secret store while they live
    (right after the boot, before any test revokes a grant)."""
    store = LocalEncryptedStore(parent.data_dir)
    found = []
    for grant in data(parent.api("GET", f"{FEDERATION}/grants", params={"direction": "held"}))["grants"]:
        secret = asyncio.run(store.get(f"federation_grant_bearer/{grant['id']}"))
        assert secret and secret["bearer"].startswith("pngb_")
        found.append(secret["bearer"])
    assert len(found) == 3
    return found


@pytest.fixture(scope="module")
def children(booted: dict[str, Child], bearers: list[str]) -> dict[str, Child]:
    return booted


@pytest.fixture
def managed(children: dict[str, Child]) -> Child:
    """A managed child that keeps its grant: tests change it only inside try/finally."""
    return children["managed"]


@pytest.fixture
def emancipating(children: dict[str, Child]) -> Child:
    return children["emancipating"]


@contextmanager
def parent_policies(parent: Hub, *bodies: dict[str, Any]) -> Iterator[None]:
    """Policies on the parent for one test; deleted afterwards (the cascade carries that too)."""
    ids = [data(parent.api("POST", POLICIES, json=body))["policy"]["id"] for body in bodies]
    try:
        yield
    finally:
        for policy_id in ids:
            parent.api("DELETE", f"{POLICIES}/{policy_id}")


@pytest.fixture
def parent_certificate(parent: Hub, tmp_path: Path) -> Callable[[Child], tuple[str, str]]:
    """Files of a client certificate from the parent's CA, CN `fed-parent:<the child's id>` (as the
    parent issues itself), to knock on a child's federation listener directly."""
    ca = asyncio.run(
        ca_service.load_or_create(data_dir=parent.data_dir, store=LocalEncryptedStore(parent.data_dir))
    )

    def make(child: Child) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.sign_parent_client_cert(key.public_key(), peer_id=uuid.UUID(child.id))
        cert_file, key_file = tmp_path / f"{child.id}.crt", tmp_path / f"{child.id}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_file(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        return str(cert_file), str(key_file)

    return make


def mtls_call(
    url: str, method: str, path: str, *, cert: tuple[str, str], ca_file: str, bearer: str | None = None
) -> httpx.Response:
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(*cert)
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    with httpx.Client(verify=context, timeout=30) as http:
        return http.request(method, url + FEDERATION_API + path, headers=headers)


def cli(hub: Hub, *args: str) -> Any:
    """`powernode-hub <args> --json` against `hub`, found through its data dir."""
    done = subprocess.run(
        [*hub_command(), *args, "--json", "--data-dir", str(hub.data_dir)],
        capture_output=True,
        text=True,
        env=hub_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_parent_reads_its_managed_child_through_the_grant(parent, managed):
    peer = data(remote(parent, managed, "peer"))["peer"]
    audit = data(remote(parent, managed, "audit_events"))["events"]

    assert peer["spawn_role"] == "child" and peer["status"] == "active"
    assert [(g["direction"], g["state"]) for g in peer["grants"]] == [("granted", "active")]
    assert "peer.bootstrap" in [e["action"] for e in audit]


def test_the_child_enforces_scope_and_allowlists(parent, managed):
    set_grant = "UPDATE federation_grant SET permission_scopes = $1::jsonb, allowlists = $2::jsonb"
    managed.sql(set_grant, json.dumps(["read"]), "{}")
    try:
        read_only = (remote(parent, managed, "peer"), remote(parent, managed, "audit_events"))
        managed.sql(
            set_grant, json.dumps(["read", "write", "admin"]), json.dumps({"actions": ["system.peer.read"]})
        )
        allowlisted = (
            remote(parent, managed, "peer"),
            remote(parent, managed, "intervention_policies"),
        )
    finally:
        managed.sql(set_grant, json.dumps(["read", "write", "admin"]), "{}")

    assert read_only[0].status_code == 200 and refusal(read_only[1]) == (502, 403, "GRANT_DENIED")
    assert allowlisted[0].status_code == 200 and refusal(allowlisted[1]) == (502, 403, "GRANT_DENIED")
    assert remote(parent, managed, "audit_events").status_code == 200


def held_bearer(parent: Hub, child: Child) -> str:
    [grant] = data(
        parent.api("GET", f"{FEDERATION}/grants", params={"direction": "held", "peer_id": child.id})
    )["grants"]
    secret = asyncio.run(LocalEncryptedStore(parent.data_dir).get(f"federation_grant_bearer/{grant['id']}"))
    assert secret is not None
    return str(secret["bearer"])


def test_a_child_never_takes_its_own_certificate_for_its_parent(parent, managed, parent_certificate):
    """Issue 11 #16, over the child's real TLS listener: its own certificate (CN `fed:<id>`, from
    the parent's CA, the id the parent has for it) is refused; the parent's own one is taken."""
    own = json.loads((managed.data_dir / "agent" / "first-run-result.json").read_text())
    ca_file = str(managed.data_dir / "tls" / "ca.crt")
    url, bearer = managed.federation_url, held_bearer(parent, managed)
    own_cert = (own["client_cert_path"], own["client_key_path"])

    as_itself = mtls_call(url, "GET", "/peer", cert=own_cert, ca_file=ca_file, bearer=bearer)
    as_parent = mtls_call(
        url, "GET", "/peer", cert=parent_certificate(managed), ca_file=ca_file, bearer=bearer
    )

    assert as_itself.status_code == 401 and as_itself.json()["code"] == "UNAUTHORIZED"
    assert as_parent.status_code == 200


def test_a_cascade_push_dated_in_the_future_is_refused(parent, managed, parent_certificate):
    """Issue 11 #16: the parent's own certificate and bearer, a push dated 10 years ahead → 422."""
    context = ssl.create_default_context(cafile=str(managed.data_dir / "tls" / "ca.crt"))
    context.load_cert_chain(*parent_certificate(managed))
    body = {"generated_at": "2036-01-01T00:00:00+00:00", "policies": []}
    before = managed.policies()

    with httpx.Client(verify=context, timeout=30) as http:
        response = http.put(
            managed.federation_url + FEDERATION_API + "/intervention_policies",
            json=body,
            headers={"Authorization": f"Bearer {held_bearer(parent, managed)}"},
        )

    assert response.status_code == 422 and response.json()["code"] == "CASCADE_FROM_THE_FUTURE"
    assert managed.policies() == before


def test_an_expired_grant_is_refused_until_it_is_live_again(parent, managed):
    managed.sql("UPDATE federation_grant SET expires_at = now() - interval '1 minute'")
    try:
        expired = remote(parent, managed, "peer")
        findings = parent.findings(state="open", kind="peer_grant_expired")
    finally:
        managed.sql("UPDATE federation_grant SET expires_at = now() + interval '365 days'")

    assert refusal(expired) == (502, 401, "GRANT_EXPIRED")
    assert [f["peer_id"] for f in findings] == [managed.id]
    assert remote(parent, managed, "peer").status_code == 200
    assert parent.findings(state="open", kind="peer_grant_expired") == []
    assert parent.child(managed.id)["emancipated"] is False


def test_policies_cascade_by_mode_and_the_childs_override_wins(parent, children, managed):
    autonomous = children["autonomous"]
    posted = [
        {"action_pattern": pattern, "decision": decision, "scope_tags": tags}
        for pattern, decision, tags in (
            ("system.*", "deny", []),
            ("system.spawn", "require_approval", ["cluster"]),
            ("billing.*", "deny", []),
        )
    ]
    cascaded = [
        ("system.*", "deny", "cascaded", False),
        ("system.spawn", "require_approval", "cascaded", False),
    ]
    with parent_policies(parent, *posted):
        eventually(lambda: managed.policies() == cascaded)
        override = data(
            managed.api("POST", POLICIES, json={"action_pattern": "system.spawn", "decision": "allow"})
        )["policy"]
        try:
            mine = managed.policies()
            decisions = [managed.evaluate(a) for a in ("system.spawn", "system.restart", "billing.charge")]
            seen_by_parent = data(remote(parent, managed, "intervention_policies"))["policies"]
            others = autonomous.policies()
        finally:
            managed.api("DELETE", f"{POLICIES}/{override['id']}")

    assert mine == [
        ("system.*", "deny", "cascaded", False),
        ("system.spawn", "allow", "local", False),
        ("system.spawn", "require_approval", "cascaded", True),
    ]
    assert decisions == ["allow", "deny", "allow"]
    assert {(p["action_pattern"], p["origin"], p["overridden"]) for p in seen_by_parent} == {
        ("system.*", "cascaded", False),
        ("system.spawn", "local", False),
        ("system.spawn", "cascaded", True),
    }
    assert others == []


def test_emancipation_then_mutual_emancipation(parent, emancipating):
    with parent_policies(parent, {"action_pattern": "system.emancipation.*", "decision": "deny"}):
        eventually(lambda: ("system.emancipation.*", "deny", "cascaded", False) in emancipating.policies())
        _emancipate_then_revoke_mutually(parent, emancipating)


def _emancipate_then_revoke_mutually(parent: Hub, emancipating: Child) -> None:
    [granted] = emancipating.data(
        "GET", f"{FEDERATION}/grants", params={"resource_kind": "managed_child_operator"}
    )["grants"]

    revoked = emancipating.data(
        "POST", f"{FEDERATION}/grants/{granted['id']}/revoke", json={"reason": "mine now"}
    )
    next_call = remote(parent, emancipating, "peer")

    assert revoked["grant"]["state"] == "revoked"
    assert refusal(next_call) == (502, 401, "GRANT_REVOKED")
    child = parent.child(emancipating.id)
    assert child["status"] == "active" and child["emancipated"] is True
    # From here on (the parent knows), nothing more reaches the child: a push is refused.
    pushed_before = child["metadata"].get("policy_cascade")
    assert "peer_grant_revoked" in [f["kind"] for f in child["findings"]]
    assert [f["peer_id"] for f in parent.findings(state="open", kind="peer_grant_revoked")] == [
        emancipating.id
    ]

    before = emancipating.policies()
    with parent_policies(parent, {"action_pattern": "system.federation.*", "decision": "deny"}):
        assert not wait_until(lambda: emancipating.policies() != before, 3, interval=0.3)
    assert parent.child(emancipating.id)["metadata"].get("policy_cascade") == pushed_before
    [kept] = [
        p
        for p in emancipating.data("GET", POLICIES)["policies"]
        if p["action_pattern"] == "system.emancipation.*"
    ]
    assert kept["origin"] == "cascaded"
    assert emancipating.api("DELETE", f"{POLICIES}/{kept['id']}").status_code == 200

    [held] = cli(parent, "grants", "list", "--peer", emancipating.id)
    mutual = cli(parent, "grants", "revoke", held["id"], "--reason", "agreed")
    stopped = remote(parent, emancipating, "peer")

    assert (
        mutual["state"] == "revoked" and mutual["direction"] == "held" and mutual["revoke_reason"] == "agreed"
    )
    assert (
        asyncio.run(LocalEncryptedStore(parent.data_dir).get(f"federation_grant_bearer/{held['id']}")) is None
    )
    assert stopped.status_code == 409 and stopped.json()["code"] == "NO_LIVE_GRANT"
    assert parent.child(emancipating.id)["status"] == "active"


def test_a_grant_the_parent_gives_up_is_refused_by_the_child(parent, children, bearers, parent_certificate):
    """Issue 11 #6: the parent revokes the grant it holds; the child is told (through the outbox)
    and refuses that bearer from then on, even with the parent's own certificate."""
    child = children["revoked_by_parent"]
    [held] = data(parent.api("GET", f"{FEDERATION}/grants", params={"peer_id": child.id}))["grants"]
    call = {"cert": parent_certificate(child), "ca_file": str(child.data_dir / "tls" / "ca.crt")}
    answers = {b: mtls_call(child.federation_url, "GET", "/peer", bearer=b, **call) for b in bearers}
    [bearer] = [b for b, answer in answers.items() if answer.status_code == 200]  # its own, from boot
    before = answers[bearer]

    data(parent.api("POST", f"{FEDERATION}/grants/{held['id']}/revoke", json={"reason": "handing over"}))

    assert before.status_code == 200
    eventually(lambda: child.data("GET", f"{FEDERATION}/grants")["grants"][0]["state"] == "revoked")
    after = mtls_call(child.federation_url, "GET", "/peer", bearer=bearer, **call)
    assert after.status_code == 401 and after.json()["code"] == "GRANT_REVOKED"
    eventually(lambda: parent.findings(state="open", kind="grant_revoke_undelivered") == [])


def test_the_parent_revokes_a_child(parent, children):
    child = children["revoked_by_parent"]
    assert child.parent_row()["status"] == "active"
    own_cert = json.loads((child.data_dir / "agent" / "first-run-result.json").read_text())

    revoked = data(parent.api("POST", f"{FEDERATION}/children/{child.id}/revoke", json={"reason": "done"}))

    assert revoked["child"]["status"] == "revoked"
    eventually(lambda: child.parent_row()["status"] == "revoked")
    [granted] = child.data("GET", f"{FEDERATION}/grants")["grants"]
    [held] = data(parent.api("GET", f"{FEDERATION}/grants", params={"peer_id": child.id}))["grants"]
    assert granted["state"] == "revoked" and held["state"] == "revoked"
    cert = (own_cert["client_cert_path"], own_cert["client_key_path"])
    ca_file = own_cert["ca_chain_path"]
    for method, path in (("GET", "/peer"), ("POST", "/heartbeat")):
        response = mtls_call(parent.federation_url, method, path, cert=cert, ca_file=ca_file)
        assert response.status_code == 401
    last_beat = child.parent_row()["last_heartbeat_at"]
    assert not wait_until(lambda: child.parent_row()["last_heartbeat_at"] != last_beat, 2.5, interval=0.5)


def test_a_child_revokes_its_parent(parent, children, parent_certificate):
    child = children["autonomous"]
    cert = parent_certificate(child)
    ca_file = str(child.data_dir / "tls" / "ca.crt")
    before = mtls_call(child.federation_url, "GET", "/peer", cert=cert, ca_file=ca_file)

    revoked = child.data(
        "POST", f"{FEDERATION}/peers/{child.parent_row()['id']}/revoke", json={"reason": "solo"}
    )

    assert before.status_code == 200 and revoked["peer"]["status"] == "revoked"
    eventually(lambda: parent.child(child.id)["status"] == "revoked")
    assert parent.child(child.id)["revoke_reason"] == "revoked by the peer: solo"
    after = mtls_call(child.federation_url, "GET", "/peer", cert=cert, ca_file=ca_file)
    assert after.status_code == 401 and after.json()["code"] == "PEER_REVOKED"
    assert child.parent_row()["status"] == "revoked"


async def all_rows(data_dir: Path) -> str:
    connection = await asyncpg.connect(PostgresServer(data_dir / "postgres").url("powernode"))
    try:
        tables = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        dumped = []
        for table in tables:
            rows = await connection.fetch(f'SELECT * FROM "{table["table_name"]}"')
            dumped.append(f"{table['table_name']}: {[dict(r) for r in rows]!r}")
        return "\n".join(dumped)
    finally:
        await connection.close()


def logs(parent: Hub, children: dict[str, Child]) -> Iterator[Path]:
    yield parent.log
    for child in children.values():
        yield child.node / "console.log"
        yield child.data_dir / "agent" / "first-run-result.json"


def test_the_bearer_is_in_no_table_and_no_log_on_either_side(parent, children, bearers):
    dumps = [asyncio.run(all_rows(parent.data_dir))]
    dumps += [asyncio.run(all_rows(child.data_dir)) for child in children.values()]
    texts = [path.read_text(errors="replace") for path in logs(parent, children)]

    assert "federation_grant" in dumps[0] and "managed_child_operator" in dumps[1]
    for bearer in bearers:
        assert not any(bearer in text for text in dumps + texts)
        assert not any(bearer.split("_", 2)[-1] in text for text in dumps + texts)  # the secret part

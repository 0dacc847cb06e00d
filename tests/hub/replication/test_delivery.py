"""The replication credential reaches the member once: in the accept answer, or from its own route."""

import asyncio
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.hub.replication.conftest import CHILDREN, FEDERATION_API, cluster_pg, read_secret

CREDENTIAL = f"{FEDERATION_API}/replication_credential"


def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def accept(client, child, **extra):
    body = {"acceptance_token": child.token, "contract_version": 1, **extra}
    response = await client.post(f"{FEDERATION_API}/accept", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_accept_carries_the_password_once_and_the_route_then_refuses(
    spawn, run_jobs, client, primary, vault, settings
):
    child = await spawn()
    await run_jobs()

    data = await accept(client, child, csr_pem=csr_pem())
    fetched = await client.get(CREDENTIAL, headers=child.peer_headers)

    secret = read_secret(vault, child.names)
    block = await cluster_pg(primary, child)
    redis_url = data["cluster_pg"].pop("redis_url")
    assert data["cluster_pg"] == {
        **{k: block[k] for k in ("state", "slot_name", "primary_host", "primary_port", "credential_id")},
        "username": child.names.role,
        "password": secret["password"],
        "database": urlsplit(settings.database_url()).path.lstrip("/"),
        "prepared_at": block["prepared_at"],
        "expires_at": secret["expires_at"],
    }
    # The member's own Redis user, never our URL and password.
    member_redis, ours = urlsplit(redis_url), urlsplit(settings.redis_url())
    assert (member_redis.username, member_redis.password) == (child.names.role, secret["redis_password"])
    assert (member_redis.hostname, member_redis.port, member_redis.path) == (
        ours.hostname,
        ours.port,
        ours.path,
    )
    assert "redis_url" not in data
    assert block["delivered_via"] == "accept" and block["delivered_at"]
    assert fetched.status_code == 409
    assert fetched.json()["code"] == "ALREADY_DELIVERED"
    assert secret["password"] not in fetched.text


async def test_the_same_key_retrying_accept_gets_the_credential_again(spawn, run_jobs, client, vault):
    child = await spawn()
    await run_jobs()
    csr = csr_pem()

    first = await accept(client, child, csr_pem=csr)
    again = await accept(client, child, csr_pem=csr)  # the first answer was lost on the way

    assert first["cluster_pg"]["password"] == again["cluster_pg"]["password"]
    assert again["cluster_pg"]["password"] == read_secret(vault, child.names)["password"]


async def test_accepted_before_ready_the_route_says_not_ready_then_delivers_once(
    spawn, run_jobs, client, vault, settings
):
    child = await spawn()
    data = await accept(client, child)

    early = await client.get(CREDENTIAL, headers=child.peer_headers)
    await run_jobs()
    delivered = await client.get(CREDENTIAL, headers=child.peer_headers)
    second = await client.get(CREDENTIAL, headers=child.peer_headers)

    assert "cluster_pg" not in data and "redis_url" not in data
    assert (early.status_code, early.json()["code"]) == (425, "NOT_READY")
    assert delivered.status_code == 200, delivered.text
    secret = read_secret(vault, child.names)
    assert delivered.json()["data"] == {
        "slot_name": child.names.slot,
        "primary_host": "127.0.0.1",
        "primary_port": delivered.json()["data"]["primary_port"],
        "username": child.names.role,
        "password": secret["password"],
        "credential_id": str(child.id),
        "expires_at": secret["expires_at"],
        "database": urlsplit(settings.database_url()).path.lstrip("/"),
        "redis_url": delivered.json()["data"]["redis_url"],
    }
    assert urlsplit(delivered.json()["data"]["redis_url"]).password == secret["redis_password"]
    assert (second.status_code, second.json()["code"]) == (409, "ALREADY_DELIVERED")


async def test_concurrent_fetches_deliver_once(spawn, run_jobs, client):
    child = await spawn()
    await accept(client, child)
    await run_jobs()

    answers = await asyncio.gather(*(client.get(CREDENTIAL, headers=child.peer_headers) for _ in range(6)))

    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409, 409]


async def test_reissue_rotates_the_password_and_allows_one_more_fetch(
    spawn, run_jobs, client, operator, primary, vault
):
    child = await spawn()
    await run_jobs()
    old = (await accept(client, child, csr_pem=csr_pem()))["cluster_pg"]

    reissued = await client.post(f"{CHILDREN}/{child.id}/replication/reissue", headers=operator)
    fetched = await client.get(CREDENTIAL, headers=child.peer_headers)
    again = await client.get(CREDENTIAL, headers=child.peer_headers)

    assert reissued.status_code == 200, reissued.text
    view = reissued.json()["data"]["cluster_pg"]
    assert "delivered_at" not in view and view["rotated_at"] and view["expires_at"] != old["expires_at"]
    secret = read_secret(vault, child.names)
    assert fetched.status_code == 200
    assert fetched.json()["data"]["password"] == secret["password"] != old["password"]
    assert fetched.json()["data"]["redis_url"] != old["redis_url"]
    assert again.status_code == 409
    role = child.names.role
    valid_until = await primary.fetchval("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", role)
    assert valid_until.isoformat() == secret["expires_at"]


async def test_only_a_live_cluster_member_may_fetch(spawn, client):
    managed = await spawn("managed_child")
    await accept(client, managed)
    proposed = await spawn()

    not_member = await client.get(CREDENTIAL, headers=managed.peer_headers)
    not_accepted = await client.get(CREDENTIAL, headers=proposed.peer_headers)
    anonymous = await client.get(CREDENTIAL)

    assert (not_member.status_code, not_member.json()["code"]) == (409, "NOT_CLUSTER_MEMBER")
    assert (not_accepted.status_code, not_accepted.json()["code"]) == (401, "UNAUTHORIZED")
    assert anonymous.status_code == 401


async def test_once_the_member_enrolled_a_retried_accept_carries_no_password(spawn, run_jobs, client, vault):
    """Issue 11 #10: the key and token retried after the member confirmed delivery get no secret."""
    child = await spawn()
    await run_jobs()
    csr = csr_pem()
    first = await accept(client, child, csr_pem=csr)
    enrolled = await client.post(
        f"{FEDERATION_API}/enroll",
        json={"platform_id": "member", "platform_url": "https://member.test"},
        headers=child.peer_headers,
    )

    again = await accept(client, child, csr_pem=csr)

    assert enrolled.status_code == 200, enrolled.text
    password = read_secret(vault, child.names)["password"]
    assert first["cluster_pg"]["password"] == password
    assert again["cluster_pg"].get("password") is None and password not in str(again)
    assert again["client_cert_pem"] == first["client_cert_pem"]


async def test_a_token_only_accept_carries_no_secret(spawn, run_jobs, client, vault):
    child = await spawn()
    await run_jobs()

    data = await accept(client, child)  # no CSR: whoever holds the token, not a key
    fetched = await client.get(CREDENTIAL, headers=child.peer_headers)

    secret = read_secret(vault, child.names)
    assert data["cluster_pg"]["state"] == "ready"
    assert data["cluster_pg"].get("password") is None and data["cluster_pg"].get("redis_url") is None
    assert "redis_url" not in data and secret["password"] not in str(data)
    assert fetched.status_code == 200  # the child's key fetches it, once

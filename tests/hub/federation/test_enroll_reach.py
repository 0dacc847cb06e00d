"""Issue 11 #5, at enroll: what a child may advertise as its federation endpoint and CA, over the
hub's real mTLS listener. Only https, only a CA certificate, and the CA is pinned once named."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from tests.harness.listeners import federation_listener, peer_client
from tests.hub.grants.child_side import new_ca
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn

ENROLL = "/api/v1/system/federation_api/enroll"


def enroll_body(url: str, ca_pem: str) -> dict:
    return {
        "platform_id": "p-1",
        "platform_url": "https://child.test",
        "endpoints": [{"url": url, "scope": "federation"}],
        "capabilities": {"federation_ca_pem": ca_pem},
    }


async def test_only_an_https_endpoint_and_a_ca_are_taken_and_the_ca_stays_pinned(
    client, runtime, settings, tmp_path
):
    headers = await operator_headers(runtime)
    data = await spawn(client, headers, "managed_child")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "child")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    body = {"acceptance_token": data["acceptance_token"], "contract_version": 1, "csr_pem": csr}
    accepted = (await client.post(ACCEPT, json=body)).json()["data"]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    ours, other = await new_ca(tmp_path / "ours"), await new_ca(tmp_path / "other")
    leaf, _ = ours.issue_server_cert(["127.0.0.1"], days=1)

    async with federation_listener(settings, runtime) as url:
        child = peer_client(
            url,
            tmp_path / "c",
            cert_pem=accepted["client_cert_pem"],
            key_pem=key_pem,
            ca_pem=accepted["ca_chain_pem"],
        )
        async with child:
            plain = await child.post(ENROLL, json=enroll_body("http://127.0.0.1:9443", ours.chain_pem))
            userinfo = await child.post(
                ENROLL, json=enroll_body("https://u:p@127.0.0.1:9443", ours.chain_pem)
            )
            not_a_ca = await child.post(ENROLL, json=enroll_body("https://127.0.0.1:9443", leaf))
            garbage = await child.post(
                ENROLL, json=enroll_body("https://127.0.0.1:9443", "-----BEGIN nothing")
            )
            taken = await child.post(ENROLL, json=enroll_body("https://127.0.0.1:9443", ours.chain_pem))
            again = await child.post(ENROLL, json=enroll_body("https://127.0.0.1:9444", ours.chain_pem))
            swapped = await child.post(ENROLL, json=enroll_body("https://127.0.0.1:9443", other.chain_pem))

    assert (plain.status_code, plain.json()["code"]) == (422, "PEER_ENDPOINT_NOT_HTTPS")
    assert (userinfo.status_code, userinfo.json()["code"]) == (422, "PEER_ENDPOINT_INVALID")
    assert (not_a_ca.status_code, not_a_ca.json()["code"]) == (422, "PEER_CA_INVALID")
    assert (garbage.status_code, garbage.json()["code"]) == (422, "PEER_CA_INVALID")
    assert taken.status_code == 200 and again.status_code == 200
    assert (swapped.status_code, swapped.json()["code"]) == (409, "PEER_CA_PINNED")
    child_row = (await client.get(f"{CHILDREN}/{data['child']['id']}", headers=headers)).json()["data"][
        "child"
    ]
    assert child_row["capabilities"]["federation_ca_pem"] == ours.chain_pem
    assert child_row["endpoints"] == [{"url": "https://127.0.0.1:9444", "scope": "federation", "priority": 0}]

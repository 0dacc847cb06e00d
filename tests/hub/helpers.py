"""Small arrangements the API tests share: operator tokens, CSRs, a spawn."""

from __future__ import annotations

from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.operators.permissions import ALL_PERMISSIONS
from hub.operators.service import create_operator_token
from hub.runtime import HubRuntime

SPAWN = "/api/v1/system/federation/children/spawn"
CHILDREN = "/api/v1/system/federation/children"
ACCEPT = "/api/v1/system/federation_api/accept"
TEMPLATE_FOR = {
    "managed_child": "powernode-hub",
    "autonomous_peer": "powernode-hub",
    "cluster_member": "powernode-hub-cluster-member",
}


async def operator_headers(runtime: HubRuntime, permissions: list[str] | None = None) -> dict[str, str]:
    async with runtime.sessionmaker() as session:
        _, token = await create_operator_token(
            session, name="test", permissions=permissions or ALL_PERMISSIONS
        )
        await session.commit()
    return {"Authorization": f"Bearer {token}"}


def make_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def spawn_body(mode: str = "managed_child", **target: Any) -> dict[str, Any]:
    return {
        "spawn_mode": mode,
        "parent_url": "https://parent.example.test/",
        "spawn_target": {"template_id": TEMPLATE_FOR[mode], **target},
    }


async def spawn(
    client: httpx.AsyncClient, headers: dict[str, str], mode: str = "managed_child", **target: Any
) -> dict[str, Any]:
    response = await client.post(SPAWN, json=spawn_body(mode, **target), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]

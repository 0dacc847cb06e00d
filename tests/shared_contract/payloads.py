"""Sample payloads shared by the payload tests."""

from shared_contract.payload import SpawnPayload

PEM = (
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQk\nZm9vYmFy\n-----END CERTIFICATE-----\n"
    "-----BEGIN CERTIFICATE-----\nMIIBrjCCAVSgAwIBAgIUD\n-----END CERTIFICATE-----\n"
)


def full_payload() -> SpawnPayload:
    return SpawnPayload(
        parent_url="https://parent.example.test:8443/",
        acceptance_token="pn_tok_0123456789abcdef",
        spawn_mode="cluster_member",
        parent_peer_id="6f1c2a8e-0000-4000-8000-000000000001",
        contract_version="v1",
        instance_uuid="0d9e4f5a-0000-4000-8000-000000000002",
        instance_name="child-eu-1",
        ca_pem=PEM,
        platform_url="https://child-eu-1.example.test/",
        child_template_id="tmpl-cluster",
        token_expires_at="2030-01-01T00:00:00Z",
        provisioner="qemu",
        region="eu-west",
        initiated_by_user_id="5b2d9c1e-0000-4000-8000-000000000003",
    )

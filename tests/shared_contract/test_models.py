import json
import stat

import pytest
from pydantic import ValidationError

from shared_contract import (
    AcceptRequest,
    AcceptResponseData,
    ClusterPgBlock,
    Endpoint,
    ErrorEnvelope,
    FirstRunResult,
    GrantInfo,
    HeartbeatRequest,
    PageMeta,
    ReplicationCredential,
    SpawnPayload,
    StandbyInfo,
    SuccessEnvelope,
)

SECRET = "s3cr3t-value-never-logged"
NOW = "2025-06-01T12:00:00Z"


def cluster_pg(password: str | None = None) -> ClusterPgBlock:
    return ClusterPgBlock(
        state="ready",
        slot_name="powernode_repl_0123456789abcdef0123456789abcdef",
        primary_host="10.0.0.1",
        primary_port=5432,
        credential_id="cred-1",
        username="powernode_repl_0123456789abcdef",
        password=password,
        prepared_at=NOW,
    )


def first_run_result(**changes) -> FirstRunResult:
    values = {
        "peer_id": "peer-1",
        "parent_peer_id": "parent-peer-1",
        "parent_url": "https://parent.test/",
        "spawn_mode": "cluster_member",
        "contract_version_agreed": 1,
        "accepted_at": NOW,
        "instance_uuid": "uuid-1",
        "instance_name": "child-1",
        "platform_url": "https://child.test/",
        "client_cert_path": "/var/lib/powernode/client.crt",
        "client_key_path": "/var/lib/powernode/client.key",
        "ca_chain_path": "/var/lib/powernode/ca.pem",
        "cluster_pg": cluster_pg(),
        "standby": StandbyInfo(data_dir="/var/lib/pg", port=5433, pg_bin="/usr/lib/pg/bin"),
        "redis_url": f"redis://:{SECRET}@10.0.0.1:6379/0",
        "completed_at": NOW,
    }
    return FirstRunResult(**(values | changes))


def test_accept_request_takes_exactly_what_the_original_agent_sends():
    body = json.dumps({"acceptance_token": "pn_tok_abc", "contract_version": 1})

    request = AcceptRequest.model_validate_json(body)

    assert request.acceptance_token == "pn_tok_abc"
    assert request.contract_version == 1
    assert request.endpoints == [] and request.extension_slugs == [] and request.capabilities == {}
    assert request.csr_pem is None and request.child is None
    assert request.to_wire() == {
        "acceptance_token": "pn_tok_abc",
        "contract_version": 1,
        "extension_slugs": [],
        "endpoints": [],
        "capabilities": {},
    }


def test_accept_request_leaves_unsupported_versions_to_the_hub():
    assert AcceptRequest(acceptance_token="", contract_version=99).contract_version == 99


@pytest.mark.parametrize(
    "change",
    [
        {"acceptance_token": "t" * 513},
        {"extension_slugs": ["x"] * 65},
        {"endpoints": [{"url": "https://c.test", "scope": "public"}] * 65},
        {"csr_pem": "x" * (16 * 1024 + 1)},
        {"contract_version": "v1"},
    ],
)
def test_accept_request_limits(change):
    with pytest.raises(ValidationError):
        AcceptRequest.model_validate({"acceptance_token": "t", "contract_version": 1} | change)


def test_accept_response_parses_the_original_shape_and_leaves_out_our_absent_additions():
    wire = {
        "peer_id": "p-1",
        "status": "accepted",
        "peer_kind": "platform",
        "contract_version_agreed": 1,
        "accepted_at": "2025-06-01T12:00:00.123Z",
        "handshake_at": "2025-06-01T12:00:00.123Z",
    }

    assert AcceptResponseData.model_validate(wire).to_wire() == wire


def test_accept_response_refuses_a_non_iso_time():
    with pytest.raises(ValidationError, match="accepted_at"):
        AcceptResponseData(
            peer_id="p",
            status="accepted",
            contract_version_agreed=1,
            accepted_at="yesterday",
            handshake_at=NOW,
        )


def test_envelopes_leave_out_their_own_none_fields_but_keep_nulls_in_data():
    success = SuccessEnvelope[dict](data={"last_heartbeat_at": None})
    paged = SuccessEnvelope[list[int]](data=[1], meta=PageMeta(count=1, limit=50).to_wire())
    error = ErrorEnvelope(error="acceptance_token not recognized or expired")

    assert success.to_wire() == {"success": True, "data": {"last_heartbeat_at": None}}
    assert paged.to_wire() == {"success": True, "data": [1], "meta": {"count": 1, "limit": 50}}
    assert error.to_wire() == {
        "success": False,
        "error": "acceptance_token not recognized or expired",
    }
    assert ErrorEnvelope(error="x", code="UNAUTHORIZED").to_wire()["code"] == "UNAUTHORIZED"


def test_an_empty_heartbeat_is_valid_and_sends_nothing():
    assert HeartbeatRequest().to_wire() == {}
    assert HeartbeatRequest(endpoints=[Endpoint(url="https://c.test", scope="lan")]).to_wire() == {
        "endpoints": [{"url": "https://c.test", "scope": "lan", "priority": 0}]
    }


def test_secrets_never_show_in_repr():
    models = [
        SpawnPayload(parent_url="https://p.test", acceptance_token=SECRET),
        AcceptRequest(acceptance_token=SECRET, contract_version=1),
        GrantInfo(id="g", resource_kind="k", remote_subject="s", bearer_token=SECRET, expires_at=NOW),
        cluster_pg(password=SECRET),
        AcceptResponseData(
            peer_id="p",
            status="accepted",
            contract_version_agreed=1,
            accepted_at=NOW,
            handshake_at=NOW,
            redis_url=f"redis://:{SECRET}@h:6379",
            cluster_pg=cluster_pg(password=SECRET),
        ),
        ReplicationCredential(
            slot_name="s",
            primary_host="h",
            primary_port=5432,
            username="u",
            password=SECRET,
            credential_id="c",
        ),
        first_run_result(),
    ]

    for model in models:
        assert SECRET not in repr(model), type(model).__name__
        assert SECRET not in str(model), type(model).__name__


def test_first_run_result_refuses_a_cluster_pg_password():
    with pytest.raises(ValidationError, match=r"cluster_pg\.password must not be stored"):
        first_run_result(cluster_pg=cluster_pg(password=SECRET))

    assert first_run_result(cluster_pg=cluster_pg(SECRET).without_password()).cluster_pg


def test_first_run_result_write_read_round_trip_is_0600(tmp_path):
    path = tmp_path / "state" / "first-run.json"
    result = first_run_result()

    result.write(path)

    assert FirstRunResult.read(path) == result
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["first-run.json"]


def test_first_run_result_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "first-run.json"
    first_run_result().write(path)

    first_run_result(peer_id="peer-2").write(path)

    assert FirstRunResult.read(path).peer_id == "peer-2"

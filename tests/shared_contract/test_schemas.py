import json
import shutil

import pytest
from pydantic import create_model

from shared_contract import AcceptRequest, AcceptResponseData, ClusterPgBlock, HeartbeatRequest, schemas
from shared_contract.version import SCHEMA_VERSION


@pytest.fixture
def schema_copy(tmp_path):
    directory = tmp_path / "schemas"
    shutil.copytree(schemas.SCHEMA_DIR, directory)
    return directory


def test_committed_schemas_match_the_models():
    assert schemas.check() == []
    assert schemas.compat_check() == []


def test_every_schema_carries_the_schema_version():
    for name, schema in schemas.generate().items():
        assert schema["x-schema-version"] == SCHEMA_VERSION, name


def test_committed_files_are_sorted_indented_and_end_with_a_newline():
    text = (schemas.SCHEMA_DIR / "accept_request.json").read_text()

    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


def test_check_reports_an_altered_a_missing_and_a_stale_file(schema_copy):
    altered = json.loads((schema_copy / "accept_request.json").read_text())
    altered["required"] = ["acceptance_token"]
    (schema_copy / "accept_request.json").write_text(json.dumps(altered))
    (schema_copy / "heartbeat_request.json").unlink()
    (schema_copy / "old_thing.json").write_text("{}")

    problems = schemas.check(schema_copy)

    assert problems == [
        "stale schema file old_thing.json: no model 'old_thing'",
        "schema file accept_request.json differs from the model 'accept_request'",
        "missing schema file heartbeat_request.json",
    ]


def test_write_repairs_drift(schema_copy):
    (schema_copy / "endpoint.json").write_text("{}")
    (schema_copy / "old_thing.json").write_text("{}")

    schemas.write(schema_copy)

    assert schemas.check(schema_copy) == []


def test_dropping_a_field_is_a_breaking_change():
    fields = {
        name: (info.annotation, info)
        for name, info in AcceptRequest.model_fields.items()
        if name != "capabilities"
    }
    changed = create_model("AcceptRequest", **fields)  # type: ignore[call-overload]

    changes = schemas.breaking_changes(schemas.schema_of(AcceptRequest), schemas.schema_of(changed))

    assert changes == ["AcceptRequest.capabilities: property removed"]


def test_making_an_optional_field_required_is_a_breaking_change():
    changed = create_model("AcceptRequest", __base__=AcceptRequest, csr_pem=(str, ...))

    changes = schemas.breaking_changes(schemas.schema_of(AcceptRequest), schemas.schema_of(changed))

    assert changes == [
        "AcceptRequest.csr_pem: newly required",
        "AcceptRequest.csr_pem: no longer accepts null",
    ]


def test_breaking_changes_in_nested_models_are_found_through_defs():
    pg = create_model("ClusterPgBlock", __base__=ClusterPgBlock, prepared_at=(str, ...))
    changed = create_model("AcceptResponseData", __base__=AcceptResponseData, cluster_pg=(pg | None, None))

    changes = schemas.breaking_changes(schemas.schema_of(AcceptResponseData), schemas.schema_of(changed))

    assert changes == [
        "AcceptResponseData.cluster_pg.prepared_at: newly required",
        "AcceptResponseData.cluster_pg.prepared_at: no longer accepts null",
    ]


def test_adding_an_optional_field_is_not_breaking():
    changed = create_model("AcceptRequest", __base__=AcceptRequest, note=(str | None, None))

    assert schemas.breaking_changes(schemas.schema_of(AcceptRequest), schemas.schema_of(changed)) == []


def test_compat_check_fails_without_a_major_bump_and_passes_with_one(schema_copy, monkeypatch):
    committed = json.loads((schema_copy / "accept_request.json").read_text())
    committed["properties"]["legacy_field"] = {"type": "string"}
    (schema_copy / "accept_request.json").write_text(json.dumps(committed))

    assert schemas.compat_check(schema_copy) == [
        "accept_request: AcceptRequest.legacy_field: property removed"
    ]

    monkeypatch.setattr(schemas, "SCHEMA_VERSION", "2.0.0")
    assert schemas.compat_check(schema_copy) == []


def test_cli_check_exits_1_with_one_line_per_problem(schema_copy, capsys):
    (schema_copy / "endpoint.json").unlink()

    assert schemas.main(["--check", "--dir", str(schema_copy)]) == 1
    assert capsys.readouterr().err == "missing schema file endpoint.json\n"
    assert schemas.main(["--check"]) == 0


def test_narrowing_a_type_is_a_breaking_change():
    # The first heartbeat contract took sync_cursor as a string; the original sends an object.
    # Taking only an object would refuse every string sender, and the check must say so.
    changed = create_model("HeartbeatRequest", __base__=HeartbeatRequest, sync_cursor=(dict | None, None))

    changes = schemas.breaking_changes(schemas.schema_of(HeartbeatRequest), schemas.schema_of(changed))

    assert changes == ["HeartbeatRequest.sync_cursor: no longer accepts string"]


def test_widening_a_type_is_not_breaking():
    old = create_model("HeartbeatRequest", __base__=HeartbeatRequest, sync_cursor=(str | None, None))

    assert schemas.breaking_changes(schemas.schema_of(old), schemas.schema_of(HeartbeatRequest)) == []


def test_the_heartbeat_takes_the_originals_sync_cursor_object_and_our_string():
    original = {
        "capabilities": {"v": 2},
        "endpoints": [{"url": "https://peer.example.com:443", "scope": "wan", "priority": 1}],
        "sync_cursor": {"accounts": {"last_id": "abc"}},
    }

    assert HeartbeatRequest.model_validate(original).sync_cursor == {"accounts": {"last_id": "abc"}}
    assert HeartbeatRequest.model_validate({"sync_cursor": "c-1"}).sync_cursor == "c-1"

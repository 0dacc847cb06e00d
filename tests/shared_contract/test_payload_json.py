import json

import pytest

from shared_contract.payload import PayloadError, SpawnPayload, read_payload_file
from tests.shared_contract.payloads import PEM, full_payload


def test_json_round_trip_is_exact():
    payload = full_payload()

    assert SpawnPayload.from_json(payload.to_json()) == payload


def test_json_has_every_key_by_field_name():
    assert list(json.loads(SpawnPayload().to_json())) == list(SpawnPayload.keys())


def test_missing_and_null_keys_are_empty_and_unknown_keys_ignored():
    payload = SpawnPayload.from_json('{"parent_url": null, "spawn_mode": "managed_child", "x": 1}')

    assert payload.parent_url == ""
    assert payload.acceptance_token == ""
    assert payload.contract_version == "v1"
    assert not payload.is_spawned_child


def test_payload_file_is_read_trimmed(tmp_path):
    path = tmp_path / "federation-payload.json"
    path.write_text(json.dumps({"parent_url": " https://p.test/\n", "ca_pem": PEM}))

    payload = read_payload_file(path)

    assert payload.parent_url == "https://p.test/"
    assert payload.ca_pem == PEM.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "Payload is not valid JSON: .* at line 1 column 2"),
        ('["https://p.test"]', "Payload JSON must be an object, not list"),
        ('"https://p.test"', "Payload JSON must be an object, not str"),
        ('{"parent_url": 1, "spawn_mode": []}', "must be strings: parent_url, spawn_mode"),
    ],
)
def test_bad_json_is_a_one_line_payload_error(text, message):
    with pytest.raises(PayloadError, match=message) as excinfo:
        SpawnPayload.from_json(text)

    assert "\n" not in str(excinfo.value)


def test_undecodable_payload_file_is_a_payload_error(tmp_path):
    path = tmp_path / "federation-payload.json"
    path.write_bytes(b'{"parent_url": "\xff"}')

    with pytest.raises(PayloadError, match="not valid UTF-8"):
        read_payload_file(path)


def test_a_complete_payload_is_valid_for_first_run():
    full_payload().validate_for_first_run()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"acceptance_token": " "}, "acceptance_token is empty"),
        (
            {"spawn_mode": "out_of_band"},
            "spawn_mode 'out_of_band' is not one of managed_child, autonomous_peer, cluster_member",
        ),
        (
            {"parent_url": "parent.example.test"},
            "parent_url 'parent.example.test' is not an absolute http(s) URL",
        ),
        (
            {"parent_url": "ftp://parent.example.test/"},
            "parent_url 'ftp://parent.example.test/' is not an absolute http(s) URL",
        ),
        ({"parent_url": "https://[::1/"}, "parent_url 'https://[::1/' is not an absolute http(s) URL"),
        (
            {"parent_url": "http://parent.example.test/"},
            "parent_url uses plain http but provisioner 'qemu' is not local/dev",
        ),
        ({"contract_version": "version one"}, "contract_version 'version one' is not a version like 'v1'"),
        ({"ca_pem": "not a certificate"}, "ca_pem is not a PEM certificate block"),
        ({"ca_pem": PEM.split("-----END")[0]}, "ca_pem is not a PEM certificate block"),  # cut short
        ({"ca_pem": "MIIB\n-----END CERTIFICATE-----\n"}, "ca_pem is not a PEM certificate block"),
        ({"token_expires_at": "next week"}, "token_expires_at 'next week' is not an ISO-8601 timestamp"),
    ],
)
def test_first_run_validation_names_the_problem(change, message):
    payload = full_payload().model_copy(update=change)

    with pytest.raises(PayloadError) as excinfo:
        payload.validate_for_first_run()

    assert str(excinfo.value) == f"Invalid spawn payload: {message}"


def test_first_run_validation_reports_every_problem_at_once():
    payload = SpawnPayload(parent_url="https://p.test/", spawn_mode="nope")

    with pytest.raises(PayloadError, match="acceptance_token is empty; spawn_mode 'nope'"):
        payload.validate_for_first_run()


@pytest.mark.parametrize("provisioner", ["local", "dev"])
def test_plain_http_is_allowed_for_local_and_dev(provisioner):
    payload = full_payload().model_copy(
        update={"parent_url": "http://127.0.0.1:8000", "provisioner": provisioner}
    )

    payload.validate_for_first_run()


def test_token_expiry_parses_the_iso_string():
    expiry = full_payload().token_expiry()

    assert expiry is not None and expiry.year == 2030 and expiry.utcoffset() is not None
    assert SpawnPayload().token_expiry() is None


def test_payload_is_frozen():
    with pytest.raises(ValueError, match="frozen"):
        full_payload().parent_url = "https://elsewhere.test"  # type: ignore[misc]

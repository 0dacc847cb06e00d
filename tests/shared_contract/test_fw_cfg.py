import stat

import pytest

from shared_contract.payload import (
    FW_CFG_NAME_MAX,
    FW_CFG_PREFIX,
    PayloadError,
    SpawnPayload,
    fw_cfg_name,
    qemu_fw_cfg_args,
    read_fw_cfg_tree,
    stage_qemu_files,
    write_fw_cfg_tree,
)
from tests.shared_contract.payloads import PEM, full_payload


def raw_path(root, key):
    return root / FW_CFG_PREFIX / key / "raw"


def test_tree_round_trip_keeps_every_field(tmp_path):
    payload = full_payload()

    write_fw_cfg_tree(payload, tmp_path)
    read_back = read_fw_cfg_tree(tmp_path)

    assert read_back == payload.trimmed()
    assert read_back.parent_url == "https://parent.example.test:8443/"
    assert read_back.ca_pem == PEM.rstrip("\n")
    assert read_back.ca_pem.count("\n") == PEM.count("\n") - 1


def test_writer_writes_values_as_given(tmp_path):
    write_fw_cfg_tree(full_payload(), tmp_path)

    assert raw_path(tmp_path, "ca_pem").read_text() == PEM


def test_tree_files_are_0600_and_dirs_0700(tmp_path):
    root = tmp_path / "fw_cfg"

    written = write_fw_cfg_tree(full_payload(), root)

    assert set(written) == {fw_cfg_name(key) for key in SpawnPayload.keys()}
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert not list(root.rglob("*.tmp"))


def test_only_non_empty_fields_are_entries():
    payload = SpawnPayload(parent_url="https://p.test", acceptance_token="t")

    assert payload.to_fw_cfg_entries() == {
        "opt/com.powernode/parent_url": b"https://p.test",
        "opt/com.powernode/acceptance_token": b"t",
        "opt/com.powernode/contract_version": b"v1",
    }


def test_rewrite_removes_entries_that_became_empty(tmp_path):
    write_fw_cfg_tree(full_payload(), tmp_path)

    write_fw_cfg_tree(full_payload().model_copy(update={"region": ""}), tmp_path)

    assert not raw_path(tmp_path, "region").exists()
    assert read_fw_cfg_tree(tmp_path).region == ""


def test_missing_keys_read_as_empty_and_mean_no_spawned_child(tmp_path):
    payload = read_fw_cfg_tree(tmp_path)

    assert payload.parent_url == ""
    assert payload.acceptance_token == ""
    assert payload.is_spawned_child is False


def test_empty_parent_url_is_not_a_spawned_child(tmp_path):
    write_fw_cfg_tree(SpawnPayload(acceptance_token="t", spawn_mode="managed_child"), tmp_path)
    raw_path(tmp_path, "parent_url").parent.mkdir()
    raw_path(tmp_path, "parent_url").write_text("  \n")

    payload = read_fw_cfg_tree(tmp_path)

    assert payload.parent_url == ""
    assert not payload.is_spawned_child
    payload.validate_for_first_run()


def test_reader_trims_whitespace_and_ignores_unknown_keys(tmp_path):
    for key, text in {"parent_url": "\t https://p.test/ \n", "future_key": "x"}.items():
        raw_path(tmp_path, key).parent.mkdir(parents=True)
        raw_path(tmp_path, key).write_text(text)

    payload = read_fw_cfg_tree(tmp_path)

    assert payload.parent_url == "https://p.test/"
    assert payload.is_spawned_child
    assert "future_key" not in payload.model_dump()


def test_invalid_utf8_is_a_payload_error_naming_the_key(tmp_path):
    raw_path(tmp_path, "instance_name").parent.mkdir(parents=True)
    raw_path(tmp_path, "instance_name").write_bytes(b"child-\xff\xfe")

    with pytest.raises(PayloadError, match="'instance_name' is not valid UTF-8") as excinfo:
        read_fw_cfg_tree(tmp_path)

    assert "\n" not in str(excinfo.value)


def test_name_limit_refuses_a_56_character_name():
    longest_key = "k" * (FW_CFG_NAME_MAX - len(FW_CFG_PREFIX))

    assert len(fw_cfg_name(longest_key)) == 55
    with pytest.raises(ValueError, match="longer than 55"):
        fw_cfg_name(longest_key + "k")


@pytest.mark.parametrize("key", ["", "a/b", "a,b"])
def test_name_refuses_keys_qemu_cannot_carry(key):
    with pytest.raises(ValueError, match="Invalid fw_cfg key"):
        fw_cfg_name(key)


def test_every_payload_key_fits_fw_cfg():
    for key in SpawnPayload.keys():
        assert fw_cfg_name(key).startswith("opt/com.powernode/")


def test_qemu_staging_names_modes_and_contents(tmp_path):
    payload = full_payload()

    staged = stage_qemu_files(payload, tmp_path)

    assert staged["opt/com.powernode/parent_url"] == tmp_path / "opt_com.powernode_parent_url"
    assert staged["opt/com.powernode/ca_pem"].read_text() == PEM
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"opt_com.powernode_{key}" for key in SpawnPayload.keys()
    )
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in staged.values())


def test_qemu_args_escape_commas_in_paths(tmp_path):
    staged = {"opt/com.powernode/parent_url": tmp_path / "a,b" / "opt_com.powernode_parent_url"}

    assert qemu_fw_cfg_args(staged) == [
        "-fw_cfg",
        f"name=opt/com.powernode/parent_url,file={tmp_path}/a,,b/opt_com.powernode_parent_url",
    ]

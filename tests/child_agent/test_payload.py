"""first-run before any network: payloads that are corrupt, partial, or say there is nothing to do."""

import json
import subprocess
from pathlib import Path

from shared_contract.first_run import FirstRunResult
from tests.child_agent.helpers import TOKEN, assert_one_error_line, fw_cfg_tree, payload, run_agent


def _first_run(source: list[str | Path], state_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_agent("first-run", *source, "--state-dir", state_dir, "--max-wait", "0")


def test_garbage_spawn_mode_in_fw_cfg_is_refused_and_nothing_written(tmp_path: Path) -> None:
    root = fw_cfg_tree(tmp_path / "fw_cfg", payload(spawn_mode="overlord"))
    done = _first_run(["--fw-cfg-root", root], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "spawn_mode 'overlord' is not one of")
    assert not (tmp_path / "state").exists()


def test_invalid_utf8_in_fw_cfg_is_refused(tmp_path: Path) -> None:
    root = fw_cfg_tree(tmp_path / "fw_cfg", payload())
    (root / "opt/com.powernode/instance_name/raw").write_bytes(b"child-\xff\xfe")
    done = _first_run(["--fw-cfg-root", root], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "instance_name", "UTF-8")
    assert not (tmp_path / "state").exists()


def test_partial_fw_cfg_without_token_is_refused(tmp_path: Path) -> None:
    root = fw_cfg_tree(tmp_path / "fw_cfg", payload(acceptance_token=""))
    done = _first_run(["--fw-cfg-root", root], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "acceptance_token is empty")
    assert not (tmp_path / "state").exists()


def test_json_fallback_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "federation-payload.json"
    file.write_text(json.dumps([payload().model_dump()]))
    done = _first_run(["--payload-file", file], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "must be an object")
    assert not (tmp_path / "state").exists()


def test_json_fallback_that_is_not_json_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "federation-payload.json"
    file.write_text('{"parent_url": "https://parent.example.test", ')
    done = _first_run(["--payload-file", file], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "not valid JSON")


def test_missing_payload_file_is_refused(tmp_path: Path) -> None:
    done = _first_run(["--payload-file", tmp_path / "absent.json"], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "cannot read the spawn payload", "absent.json")


def test_plain_http_parent_with_a_qemu_provisioner_is_refused(tmp_path: Path) -> None:
    root = fw_cfg_tree(tmp_path / "fw_cfg", payload(parent_url="http://127.0.0.1:9/", provisioner="qemu"))
    done = _first_run(["--fw-cfg-root", root], tmp_path / "state")
    assert done.returncode == 2
    assert_one_error_line(done, "plain http")
    assert TOKEN not in done.stdout + done.stderr
    assert not (tmp_path / "state").exists()


def test_no_parent_url_means_nothing_to_do(tmp_path: Path) -> None:
    root = fw_cfg_tree(tmp_path / "fw_cfg", payload(parent_url="", acceptance_token=""))
    done = _first_run(["--fw-cfg-root", root], tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert "not a spawned child; nothing to do" in done.stdout
    assert done.stderr == ""
    assert not (tmp_path / "state").exists()


def test_an_existing_result_ends_the_run_before_the_payload_is_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    FirstRunResult(
        peer_id="3b0c0000-0000-4000-8000-000000000003",
        parent_peer_id="6f1c2a8e-0000-4000-8000-000000000001",
        parent_url="https://parent.example.test",
        spawn_mode="autonomous_peer",
        contract_version_agreed=1,
        accepted_at="2030-01-01T00:00:00+00:00",
        completed_at="2030-01-01T00:00:05+00:00",
    ).write(state / "first-run-result.json")
    # A payload that does not exist: reading it would fail with exit 2.
    done = _first_run(["--payload-file", tmp_path / "absent.json"], state)
    assert done.returncode == 0, done.stderr
    assert "already done (peer 3b0c0000-0000-4000-8000-000000000003)" in done.stdout


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    done = run_agent("first-run", "--fw-cfg-root", tmp_path, "--payload-file", tmp_path / "p.json")
    assert done.returncode == 2
    assert_one_error_line(done, "not allowed with argument")

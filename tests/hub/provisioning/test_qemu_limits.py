"""The qemu provisioner refuses what QEMU cannot carry before it starts anything (no QEMU needed)."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from pydantic import create_model

from hub.provisioning.base import NodeSpec, ProvisionError, TemplateSpec
from hub.provisioning.fwcfg_limits import (
    FW_CFG_MAX_TOTAL_BYTES,
    FW_CFG_MAX_USER_ENTRIES,
    check_fw_cfg_limits,
    stage_fw_cfg,
)
from hub.provisioning.qemu import QemuProvisioner, VmSettings, qemu_command, with_fw_cfg
from shared_contract.payload import FW_CFG_NAME_MAX, SpawnPayload

TOKEN = "pn_tok_limits_0123456789"


def payload(**changes: str) -> SpawnPayload:
    values = {
        "parent_url": "https://parent.example.test/",
        "acceptance_token": TOKEN,
        "spawn_mode": "managed_child",
        "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    }
    return SpawnPayload(**{**values, **changes})


def payload_with_extra_keys(*keys: str) -> SpawnPayload:
    """A payload carrying keys the contract does not have, to push QEMU's limits."""
    model = create_model("WiderPayload", __base__=SpawnPayload, **{key: (str, "x") for key in keys})
    return model(**payload().model_dump())


@pytest.fixture
def fake_qemu(tmp_path: Path) -> tuple[Path, Path]:
    """An executable standing in for QEMU that leaves a marker file if it is ever run."""
    marker = tmp_path / "qemu-was-run"
    binary = tmp_path / "fake-qemu"
    binary.write_text(f"#!/bin/sh\ntouch {marker}\necho 'fake-qemu: cannot start' >&2\nexit 1\n")
    binary.chmod(0o755)
    return binary, marker


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"not really a kernel")
    return path


def node_in(work_dir: Path) -> NodeSpec:
    return NodeSpec(id=uuid.uuid4(), name="limits", region=None, work_dir=work_dir)


def template(**vm: object) -> TemplateSpec:
    return TemplateSpec(id="limits", modules=(), vm=vm)


@pytest.mark.parametrize(
    ("wide_payload", "message"),
    [
        (payload_with_extra_keys("k" * 38), "is longer than 55"),  # opt/com.powernode/ + 38 = 56
        (payload_with_extra_keys(*(f"extra_{i}" for i in range(16))), "exceed QEMU's limit of 19"),
        (payload(ca_pem="A" * 65 * 1024), "over the 65536-byte cap"),
    ],
    ids=["name-56-chars", "too-many-entries", "too-large"],
)
async def test_limits_are_refused_before_qemu_starts(
    tmp_path: Path, fake_qemu: tuple[Path, Path], kernel: Path, wide_payload: SpawnPayload, message: str
) -> None:
    binary, marker = fake_qemu
    node = node_in(tmp_path / "node")

    with pytest.raises(ProvisionError, match=message) as refused:
        await QemuProvisioner().provision(
            node=node, template=template(kernel=str(kernel), qemu_binary=str(binary)), payload=wide_payload
        )

    assert TOKEN not in str(refused.value)
    assert not marker.exists()
    assert list(tmp_path.joinpath("node").rglob("*")) == []


@pytest.mark.parametrize(
    ("vm", "message"),
    [
        ({"qemu_binary": "qemu-system-nowhere"}, "QEMU binary 'qemu-system-nowhere' not found"),
        ({"kernel": "/nonexistent/vmlinuz"}, "vm.kernel '/nonexistent/vmlinuz' is not a file"),
        ({"disk_image": "/nonexistent/disk.qcow2"}, "vm.disk_image '/nonexistent/disk.qcow2' is not a file"),
        ({"network": "bridge"}, "vm.network: Input should be 'none' or 'user'"),
        ({"memory_mb": "256"}, "vm.memory_mb: Input should be a valid integer"),
        ({"floppy": "a.img"}, "vm.floppy: Extra inputs are not permitted"),
        ({"kernel": None, "disk_image": "/d.img", "append": "quiet"}, "initrd and append need a kernel"),
    ],
)
async def test_bad_settings_are_one_clear_error(
    tmp_path: Path, fake_qemu: tuple[Path, Path], kernel: Path, vm: dict[str, object], message: str
) -> None:
    binary, marker = fake_qemu
    settings = {"kernel": str(kernel), "qemu_binary": str(binary), **vm}

    with pytest.raises(ProvisionError, match=message):
        await QemuProvisioner().provision(
            node=node_in(tmp_path / "node"), template=template(**settings), payload=payload()
        )

    assert not marker.exists()


async def test_a_qemu_that_fails_to_start_leaves_no_staged_files(
    tmp_path: Path, fake_qemu: tuple[Path, Path], kernel: Path
) -> None:
    binary, marker = fake_qemu
    node = node_in(tmp_path / "node")

    with pytest.raises(ProvisionError, match=r"QEMU failed to start \(exit 1\): fake-qemu: cannot start"):
        await QemuProvisioner().provision(
            node=node, template=template(kernel=str(kernel), qemu_binary=str(binary)), payload=payload()
        )

    assert marker.exists()
    assert not (node.work_dir / "fw_cfg").exists()
    assert await QemuProvisioner().status(node=node) == "stopped"


def test_a_comma_in_the_work_dir_is_doubled_in_the_fw_cfg_argument(tmp_path: Path, kernel: Path) -> None:
    work_dir = tmp_path / "node,1"
    files = stage_fw_cfg(payload(), work_dir / "fw_cfg")

    command = qemu_command(VmSettings(kernel=kernel), work_dir=work_dir, fw_cfg_files=files)

    token_file = f"{tmp_path}/node,,1/fw_cfg/opt_com.powernode_acceptance_token"
    assert f"name=opt/com.powernode/acceptance_token,file={token_file}" in command


def test_the_command_has_one_fw_cfg_per_non_empty_key(tmp_path: Path, kernel: Path) -> None:
    sent = payload(region="", instance_name="child-1")
    files = stage_fw_cfg(sent, tmp_path / "fw_cfg")

    command = qemu_command(VmSettings(kernel=kernel), work_dir=tmp_path, fw_cfg_files=files)

    values = [command[i + 1] for i, arg in enumerate(command) if arg == "-fw_cfg"]
    names = [value.split(",file=")[0].removeprefix("name=") for value in values]
    assert sorted(names) == sorted(f"opt/com.powernode/{key}" for key in sent.non_empty())
    assert len(names) <= FW_CFG_MAX_USER_ENTRIES
    assert TOKEN not in " ".join(command)


def test_staged_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "fw_cfg"
    directory.mkdir(mode=0o755)

    files = stage_fw_cfg(payload(), directory)

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in files.values()} == {0o600}
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in files.values())


def test_restaging_rotates_the_token_and_rebuilds_the_fw_cfg_arguments(tmp_path: Path, kernel: Path) -> None:
    directory = tmp_path / "fw_cfg"
    first = qemu_command(
        VmSettings(kernel=kernel), work_dir=tmp_path, fw_cfg_files=stage_fw_cfg(payload(), directory)
    )

    rotated = stage_fw_cfg(payload(acceptance_token="pn_tok_rotated", ca_pem=""), directory)
    command = with_fw_cfg(first, rotated)

    assert rotated["opt/com.powernode/acceptance_token"].read_text() == "pn_tok_rotated"
    assert not (directory / "opt_com.powernode_ca_pem").exists()
    assert command.count("-fw_cfg") == len(rotated) == first.count("-fw_cfg") - 1
    assert command[: command.index("-fw_cfg")] == first[: first.index("-fw_cfg")]


def entries(count: int, *, name_bytes: int = 8, total: int = 0) -> dict[str, int]:
    """fw_cfg names (under opt/, each `name_bytes` long) to sizes adding up to `total`."""
    names = [f"opt/{i:0{name_bytes - 4}d}" for i in range(count)]
    sizes = [total // count] * count
    sizes[0] += total - sum(sizes)
    return dict(zip(names, sizes, strict=True))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (entries(1, name_bytes=FW_CFG_NAME_MAX + 1), "longer than 55"),
        (entries(FW_CFG_MAX_USER_ENTRIES + 1), "20 fw_cfg entries exceed QEMU's limit of 19"),
        (entries(3, total=FW_CFG_MAX_TOTAL_BYTES + 1), "is 65537 bytes, over the 65536-byte cap"),
        ({"etc/ours": 1}, "must start with 'opt/'"),
    ],
    ids=["name-56-bytes", "20-entries", "65537-bytes", "outside-opt"],
)
def test_one_past_each_limit_is_refused(sizes: dict[str, int], message: str) -> None:
    with pytest.raises(ProvisionError, match=message):
        check_fw_cfg_limits(sizes)


def test_exactly_at_every_limit_at_once_is_taken() -> None:
    """55-byte names, 19 entries, 64 KiB in all: what QEMU and the guest driver still carry."""
    check_fw_cfg_limits(
        entries(FW_CFG_MAX_USER_ENTRIES, name_bytes=FW_CFG_NAME_MAX, total=FW_CFG_MAX_TOTAL_BYTES)
    )


async def test_destroying_a_node_whose_start_failed_twice_over_is_no_error(
    tmp_path: Path, fake_qemu: tuple[Path, Path], kernel: Path
) -> None:
    binary, _ = fake_qemu
    node = node_in(tmp_path / "node")
    with pytest.raises(ProvisionError):
        await QemuProvisioner().provision(
            node=node, template=template(kernel=str(kernel), qemu_binary=str(binary)), payload=payload()
        )

    await QemuProvisioner().destroy(node=node)
    await QemuProvisioner().destroy(node=node)

    assert not node.work_dir.exists()


def test_a_staged_file_gone_before_the_command_is_built_is_named(tmp_path: Path, kernel: Path) -> None:
    files = stage_fw_cfg(payload(), tmp_path / "fw_cfg")
    gone = files["opt/com.powernode/acceptance_token"]
    gone.unlink()

    with pytest.raises(ProvisionError) as refused:
        qemu_command(VmSettings(kernel=kernel), work_dir=tmp_path, fw_cfg_files=files)

    assert str(refused.value) == f"Staged fw_cfg file {gone} is missing"

"""A real guest, booted under TCG through QemuProvisioner, reads the payload from fw_cfg byte for byte.

The guest is Debian's kernel with an initramfs the test builds (busybox + qemu_fw_cfg); its /init
prints each entry to the serial console and powers off. CI installs:
apt-get install -y --no-install-recommends qemu-system-x86 linux-image-amd64 busybox-static cpio
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import shutil
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.provisioning import guest
from hub.provisioning.base import NodeSpec, ProvisionError, ProvisionResult, TemplateSpec
from hub.provisioning.qemu import QemuProvisioner
from shared_contract.payload import SpawnPayload, read_fw_cfg_tree
from tests.hub.provisioning.guest.initramfs import build_initramfs
from tests.hub.provisioning.guest.serial import parse_serial, write_sysfs_tree

KERNEL = guest.find_kernel()
if shutil.which("qemu-system-x86_64") is None or KERNEL is None or not guest.BUSYBOX.is_file():
    pytest.skip(
        "QEMU guest test not run: qemu-system-x86_64 / kernel / busybox-static not installed",
        allow_module_level=True,
    )
pytestmark = pytest.mark.qemu
BOOT_TIMEOUT_S = 300.0  # a bound for a hang: TCG on a shared, loaded machine is slow
APPEND = "console=ttyS0 panic=-1 quiet no_timer_check"


def ca_chain_pem() -> str:
    """Two self-signed certificates, PEM: a multi-line, multi-block value like a real CA chain."""
    now = datetime.datetime.now(datetime.UTC)
    blocks = []
    for name in ("Powernode Root CA", "Powernode Federation CA"):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = x509.CertificateBuilder(
            subject,
            subject,
            key.public_key(),
            x509.random_serial_number(),
            now,
            now + datetime.timedelta(days=1),
        ).sign(key, hashes.SHA256())  # fmt: skip
        blocks.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    return "".join(blocks)


def spawn_payload(token: str) -> SpawnPayload:
    return SpawnPayload(
        parent_url="https://parent.example.test:8443/",
        acceptance_token=token,
        spawn_mode="managed_child",
        parent_peer_id=str(uuid.uuid4()),
        instance_uuid=str(uuid.uuid4()),
        instance_name="child-guest-1",
        ca_pem=ca_chain_pem(),
        platform_url="https://child-guest-1.example.test/",
        child_template_id="tmpl-guest",
        token_expires_at="2030-01-01T00:00:00+00:00",
        provisioner="qemu",
        region="eu-west",
    )


@pytest.fixture(scope="module")
def guest_template(tmp_path_factory: pytest.TempPathFactory) -> TemplateSpec:
    assert KERNEL is not None
    initrd = build_initramfs(KERNEL, tmp_path_factory.mktemp("guest") / "initramfs.cpio")
    vm = {"kernel": str(KERNEL.path), "initrd": str(initrd), "append": APPEND, "memory_mb": 256}
    return TemplateSpec(id="fw-cfg-probe", modules=(), vm=vm)


async def wait_for_poweroff(provisioner: QemuProvisioner, node: NodeSpec) -> float:
    """Wait (bounded) until the guest has powered off; return the seconds it took."""
    started = time.monotonic()
    while await provisioner.status(node=node) == "running":
        assert time.monotonic() - started < BOOT_TIMEOUT_S, "guest did not power off in time"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def running(pid: int) -> bool:
    """Whether pid is a live process (an unreaped zombie does not count)."""
    try:
        return Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def guest_read(result: ProvisionResult) -> dict[str, bytes]:
    return parse_serial(Path(result.details["serial_log"]).read_text(errors="replace"))


async def test_the_guest_reads_the_payload_it_was_given(tmp_path: Path, guest_template: TemplateSpec) -> None:
    sent = spawn_payload("pn_tok_" + uuid.uuid4().hex)
    node = NodeSpec(id=uuid.uuid4(), name="guest", region=None, work_dir=tmp_path / "node,1")
    provisioner = QemuProvisioner()

    started = time.monotonic()
    result = await provisioner.provision(node=node, template=guest_template, payload=sent)
    try:
        await wait_for_poweroff(provisioner, node)
        print(f"boot, read fw_cfg, power off: {time.monotonic() - started:.2f} s")  # shown with -rP
        read = guest_read(result)
    finally:
        await provisioner.destroy(node=node)

    assert not node.work_dir.exists()  # destroy removes the guest: console, staged files, pidfile
    assert read == {key: value.encode() for key, value in sent.non_empty().items()}
    assert read_fw_cfg_tree(write_sysfs_tree(read, tmp_path / "sysfs")) == sent.trimmed()
    assert sent.acceptance_token not in " ".join(result.details["command"])
    assert not Path(result.details["fw_cfg_dir"]).exists()


async def test_reinject_boots_the_guest_again_with_the_rotated_token(
    tmp_path: Path, guest_template: TemplateSpec
) -> None:
    first = spawn_payload("pn_tok_first")
    node = NodeSpec(id=uuid.uuid4(), name="guest", region=None, work_dir=tmp_path / "node")
    provisioner = QemuProvisioner()
    result = await provisioner.provision(node=node, template=guest_template, payload=first)
    try:
        await wait_for_poweroff(provisioner, node)
        node = dataclasses.replace(node, provider_ref=result.provider_ref, details=result.details)

        second = first.model_copy(update={"acceptance_token": "pn_tok_second"})
        rotated = await provisioner.reinject(node=node, payload=second)
        await wait_for_poweroff(provisioner, node)
        read = guest_read(rotated)
    finally:
        await provisioner.destroy(node=node)

    assert rotated.details["command"] == result.details["command"]
    assert read["acceptance_token"] == b"pn_tok_second"


def needs_qemu_img() -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("image guest test not run: qemu-img (qemu-utils) not installed")


async def test_reinject_restarts_a_running_guest_and_destroy_stops_it(tmp_path: Path) -> None:
    needs_qemu_img()
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(1024 * 1024))  # SeaBIOS finds nothing to boot and keeps retrying
    template = TemplateSpec(id="idle", modules=(), vm={"disk_image": str(disk), "memory_mb": 64})
    node = NodeSpec(id=uuid.uuid4(), name="idle", region=None, work_dir=tmp_path / "node")
    provisioner = QemuProvisioner(stop_timeout_s=5.0)
    result = await provisioner.provision(node=node, template=template, payload=spawn_payload("pn_tok_a"))
    try:
        node = dataclasses.replace(node, provider_ref=result.provider_ref, details=result.details)
        with pytest.raises(ProvisionError, match="already has a running QEMU guest"):
            await provisioner.provision(node=node, template=template, payload=spawn_payload("pn_tok_x"))
        rotated = await provisioner.reinject(node=node, payload=spawn_payload("pn_tok_b"))

        token_file = Path(rotated.details["fw_cfg_dir"]) / "opt_com.powernode_acceptance_token"
        assert token_file.read_text() == "pn_tok_b"
        assert rotated.provider_ref != result.provider_ref
        assert not running(result.details["pid"])
        assert await provisioner.status(node=node) == "running"
    finally:
        await provisioner.destroy(node=node)

    assert await provisioner.status(node=node) == "stopped"
    assert not running(rotated.details["pid"])
    assert not (node.work_dir / "fw_cfg").exists()


async def test_children_of_one_image_boot_side_by_side_and_never_write_to_it(tmp_path: Path) -> None:
    """Each node boots its own overlay of the template's image: QEMU locks and writes only that."""
    needs_qemu_img()
    image = tmp_path / "template.img"
    image.write_bytes(bytes(1024 * 1024))
    template = TemplateSpec(id="idle", modules=(), vm={"disk_image": str(image), "memory_mb": 64})
    provisioner = QemuProvisioner(stop_timeout_s=5.0)
    nodes = [
        NodeSpec(id=uuid.uuid4(), name=f"idle-{i}", region=None, work_dir=tmp_path / f"node{i}")
        for i in (1, 2)
    ]
    results = []
    try:
        for node in nodes:
            results.append(
                await provisioner.provision(node=node, template=template, payload=spawn_payload("pn_tok"))
            )
        states = [await provisioner.status(node=node) for node in nodes]
        disks = [node.work_dir / "disk.qcow2" for node in nodes]
        assert all(disk.is_file() for disk in disks)
        assert all(
            f"file={disk}" in ",".join(r.details["command"]) for disk, r in zip(disks, results, strict=True)
        )
    finally:
        for node in nodes:
            await provisioner.destroy(node=node)

    assert states == ["running", "running"]
    assert image.read_bytes() == bytes(1024 * 1024)
    assert not any(node.work_dir.exists() for node in nodes)

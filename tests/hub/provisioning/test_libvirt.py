"""The libvirt domain carries the same fw_cfg entries, limits and boot files as the QEMU command line."""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hub.provisioning.base import NodeSpec, ProvisionError, TemplateSpec
from hub.provisioning.fwcfg_limits import stage_fw_cfg
from hub.provisioning.libvirt import domain_xml
from hub.provisioning.qemu import VmSettings, qemu_command
from shared_contract.payload import SpawnPayload

PAYLOAD = SpawnPayload(
    parent_url="https://parent.example.test/",
    acceptance_token="pn_tok_libvirt",
    spawn_mode="autonomous_peer",
    ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


@pytest.fixture
def node(tmp_path: Path) -> NodeSpec:
    return NodeSpec(id=uuid.uuid4(), name="child-eu-1", region="eu", work_dir=tmp_path / "node,1")


@pytest.fixture
def template(tmp_path: Path) -> TemplateSpec:
    for name in ("vmlinuz", "initrd.img", "disk.qcow2"):
        (tmp_path / name).write_bytes(b"")
    vm = {
        "kernel": str(tmp_path / "vmlinuz"),
        "initrd": str(tmp_path / "initrd.img"),
        "append": "console=ttyS0",
        "disk_image": str(tmp_path / "disk.qcow2"),
        "memory_mb": 1024,
        "cpus": 2,
        "network": "user",
    }
    return TemplateSpec(id="tmpl", modules=(), vm=vm)


def attribute(domain: ET.Element, path: str, name: str) -> str | None:
    element = domain.find(path)
    assert element is not None, f"no {path} in the domain"
    return element.get(name)


def test_the_domain_has_one_fwcfg_entry_per_staged_file(node: NodeSpec, template: TemplateSpec) -> None:
    files = stage_fw_cfg(PAYLOAD, node.work_dir / "fw_cfg")

    domain = ET.fromstring(domain_xml(node, template, files))

    entries = {e.get("name"): e.get("file") for e in domain.findall("./sysinfo[@type='fwcfg']/entry")}
    assert entries == {name: str(path) for name, path in files.items()}
    assert attribute(domain, "./os/smbios", "mode") == "sysinfo"
    assert PAYLOAD.acceptance_token not in ET.tostring(domain, encoding="unicode")


def test_the_domain_and_the_command_line_boot_the_same_guest(node: NodeSpec, template: TemplateSpec) -> None:
    files = stage_fw_cfg(PAYLOAD, node.work_dir / "fw_cfg")
    command = qemu_command(VmSettings.from_template(template), work_dir=node.work_dir, fw_cfg_files=files)

    domain = ET.fromstring(domain_xml(node, template, files))

    assert domain.get("type") == "qemu"
    assert (domain.findtext("name"), domain.findtext("uuid")) == (node.name, str(node.id))
    assert domain.findtext("memory") == command[command.index("-m") + 1] == "1024"
    assert domain.findtext("vcpu") == command[command.index("-smp") + 1] == "2"
    for element, option in (("kernel", "-kernel"), ("initrd", "-initrd"), ("cmdline", "-append")):
        assert domain.findtext(f"./os/{element}") == command[command.index(option) + 1]
    assert attribute(domain, "./devices/disk/source", "file") == template.vm["disk_image"]
    assert attribute(domain, "./devices/disk/driver", "type") == "qcow2"
    assert attribute(domain, "./devices/interface", "type") == "user"
    serial = attribute(domain, "./devices/serial/source", "path")
    assert f"file:{serial}" in command


def test_the_domain_refuses_what_the_command_line_refuses(node: NodeSpec, template: TemplateSpec) -> None:
    files = stage_fw_cfg(PAYLOAD, node.work_dir / "fw_cfg")
    long_name = "opt/com.powernode/" + "k" * 38
    too_many = {f"opt/com.powernode/k{i}": next(iter(files.values())) for i in range(20)}

    with pytest.raises(ProvisionError, match="longer than 55"):
        domain_xml(node, template, {**files, long_name: next(iter(files.values()))})
    with pytest.raises(ProvisionError, match="20 fw_cfg entries exceed"):
        domain_xml(node, template, too_many)


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate not installed")
def test_the_domain_validates_against_libvirts_schema(
    tmp_path: Path, node: NodeSpec, template: TemplateSpec
) -> None:
    files = stage_fw_cfg(PAYLOAD, node.work_dir / "fw_cfg")
    xml_file = tmp_path / "domain.xml"
    xml_file.write_text(domain_xml(node, template, files))

    checked = subprocess.run(["virt-xml-validate", str(xml_file), "domain"], capture_output=True, text=True)

    assert checked.returncode == 0, checked.stderr + checked.stdout

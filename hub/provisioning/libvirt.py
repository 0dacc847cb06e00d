"""The libvirt form of the qemu provisioner's guest: a domain XML carrying the payload in fw_cfg.

libvirt passes ``<sysinfo type='fwcfg'><entry name=… file=…/></sysinfo>`` to QEMU as the same
``-fw_cfg name=…,file=…`` options. Stage the files with ``fwcfg_limits.stage_fw_cfg`` and parse the
settings with ``VmSettings``: the XML and the QEMU command line share both, so they cannot disagree
on names, limits or boot files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from hub.provisioning.base import NodeSpec, TemplateSpec
from hub.provisioning.fwcfg_limits import check_fw_cfg_limits, staged_sizes
from hub.provisioning.qemu import SERIAL_LOG, VmSettings


def domain_xml(node: NodeSpec, template: TemplateSpec, fw_cfg_files: Mapping[str, Path]) -> str:
    """Return a libvirt domain for node, booting from template.vm with the staged fw_cfg files."""
    settings = VmSettings.from_template(template)
    check_fw_cfg_limits(staged_sizes(fw_cfg_files))
    domain = ET.Element("domain", type="kvm" if settings.accel == "kvm" else "qemu")
    ET.SubElement(domain, "name").text = node.name
    ET.SubElement(domain, "uuid").text = str(node.id)
    ET.SubElement(domain, "memory", unit="MiB").text = str(settings.memory_mb)
    ET.SubElement(domain, "vcpu").text = str(settings.cpus)
    domain.append(_os(settings))
    sysinfo = ET.SubElement(domain, "sysinfo", type="fwcfg")
    for name, path in fw_cfg_files.items():
        ET.SubElement(sysinfo, "entry", name=name, file=str(path))
    ET.SubElement(domain, "on_reboot").text = "destroy"  # QEMU's -no-reboot
    domain.append(_devices(settings, node.work_dir.absolute() / SERIAL_LOG))
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _os(settings: VmSettings) -> ET.Element:
    os_element = ET.Element("os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    if settings.kernel:
        ET.SubElement(os_element, "kernel").text = str(settings.kernel)
    if settings.initrd:
        ET.SubElement(os_element, "initrd").text = str(settings.initrd)
    if settings.append:
        ET.SubElement(os_element, "cmdline").text = settings.append
    ET.SubElement(os_element, "smbios", mode="sysinfo")
    return os_element


def _devices(settings: VmSettings, serial_log: Path) -> ET.Element:
    devices = ET.Element("devices")
    if settings.disk_image:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=settings.disk_format)
        ET.SubElement(disk, "source", file=str(settings.disk_image))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if settings.network == "user":
        interface = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(interface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(serial_log))
    return devices

"""Build a tiny initramfs whose /init prints every opt/com.powernode fw_cfg entry and powers off.

Contents: a static busybox with a few applet links, the ``qemu_fw_cfg`` module and whatever
``modules.dep`` says it needs (decompressed on the host: busybox insmod may not read .xz/.zst), and
/init. Each entry goes to the serial console as base64 between BEGIN/END lines, so a PEM's newlines
and a value's trailing whitespace survive the trip byte for byte.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # from busybox-static: the initramfs has no libc
APPLETS = ("sh", "mount", "insmod", "base64", "poweroff")
MODULE = "qemu_fw_cfg"
BEGIN, END, DONE = "FWCFG-BEGIN", "FWCFG-END", "FWCFG-DONE"

INIT = """#!/bin/sh
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 1 > /proc/sys/kernel/printk  # keep kernel messages out of the lines the test parses
for module in {modules}; do insmod "/lib/modules/$module" || echo "FWCFG-ERROR insmod $module"; done
for entry in /sys/firmware/qemu_fw_cfg/by_name/opt/com.powernode/*; do
  [ -e "$entry/raw" ] || continue
  echo "{begin} ${{entry##*/}}"
  base64 "$entry/raw"
  echo "{end} ${{entry##*/}}"
done
echo "{done}"
poweroff -f
"""


@dataclass(frozen=True)
class GuestKernel:
    path: Path
    version: str

    @property
    def modules_dir(self) -> Path:
        return Path("/lib/modules") / self.version


def find_kernel() -> GuestKernel | None:
    """The newest readable /boot/vmlinuz-<version> whose modules are installed, if any."""
    for path in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        kernel = GuestKernel(path, path.name.removeprefix("vmlinuz-"))
        if os.access(path, os.R_OK) and (kernel.modules_dir / "modules.dep").is_file():
            return kernel
    return None


def module_chain(kernel: GuestKernel, name: str = MODULE) -> list[Path]:
    """The module file and its dependencies, in load order (dependencies first)."""
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        target, _, deps = line.partition(":")
        if Path(target).name.split(".ko")[0] == name:
            return [kernel.modules_dir / p for p in (*reversed(deps.split()), target)]
    raise FileNotFoundError(f"{name} is not in {kernel.modules_dir}/modules.dep")


def decompressed_module(path: Path) -> bytes:
    """The plain .ko bytes of a module that may be stored .ko, .ko.gz, .ko.xz or .ko.zst."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":  # no zstd in the 3.11 standard library
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def build_initramfs(kernel: GuestKernel, dest: Path) -> Path:
    """Write a cpio (newc) initramfs for kernel to dest and return dest."""
    root = dest.with_suffix(".root")
    for directory in ("bin", "dev", "proc", "sys", "lib/modules"):
        (root / directory).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    modules = []
    for path in module_chain(kernel):
        name = path.name.split(".ko")[0] + ".ko"
        (root / "lib/modules" / name).write_bytes(decompressed_module(path))
        modules.append(name)
    init = INIT.format(modules=" ".join(modules), begin=BEGIN, end=END, done=DONE)
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    _pack(root, dest)
    return dest


def _pack(root: Path, dest: Path) -> None:
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with dest.open("wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=root, input="\n".join(names).encode(), stdout=out, check=True,
        )  # fmt: skip

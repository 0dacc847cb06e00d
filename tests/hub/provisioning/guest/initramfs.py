"""A probe initramfs, made by the product's builder (hub.provisioning.guest.pack_initramfs), whose
/init prints every opt/com.powernode fw_cfg entry and powers off.

Contents: the product's static busybox and the ``qemu_fw_cfg`` module with whatever ``modules.dep``
says it needs, and /init. Each entry goes to the serial console as base64 between BEGIN/END lines,
so a PEM's newlines and a value's trailing whitespace survive the trip byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from hub.provisioning import guest

BEGIN, END, DONE = "FWCFG-BEGIN", "FWCFG-END", "FWCFG-DONE"

INIT = """#!/bb/sh
export PATH=/bb
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 1 > /proc/sys/kernel/printk  # keep kernel messages out of the lines the test parses
for module in {modules}; do insmod "/modules/$module" || echo "FWCFG-ERROR insmod $module"; done
for entry in /sys/firmware/qemu_fw_cfg/by_name/opt/com.powernode/*; do
  [ -e "$entry/raw" ] || continue
  echo "FWCFG-BEGIN ${entry##*/}"
  base64 "$entry/raw"
  echo "FWCFG-END ${entry##*/}"
done
echo "FWCFG-DONE"
poweroff -f
"""


def build_initramfs(kernel: guest.GuestKernel, dest: Path) -> Path:
    """Write the probe initramfs for kernel to dest and return dest."""
    return guest.pack_initramfs(
        kernel,
        dest,
        cache=dest.parent / "cache",
        init=INIT,
        modules=["qemu_fw_cfg"],
        applets=["sh", "mount", "insmod", "base64", "poweroff"],
    )

"""The development guest: a child VM built on the fly from what this machine has (DESIGN §7).

No image to build or download: the guest boots this machine's Debian kernel with a small
initramfs made here — a static busybox, the kernel's virtio, 9p, virtio-net and fw_cfg modules
(decompressed, in dependency order) and an /init. The init mounts this machine's installed
project read-only over virtfs (9p) at the same paths — /usr, the Python installation, the
virtualenv and the source tree, never the parent's data directory — keeps its own state in the
initramfs' tmpfs, and runs `hub.provisioning.local_boot --guest`: the agent's first run reading
/sys/firmware/qemu_fw_cfg, then the child's hub (PostgreSQL as the unprivileged `postgres` or
`powernode` user, as on any machine).

Networking is QEMU's user mode with ``restrict=on``: the guest reaches nothing but the parent's
loopback ports that are forwarded explicitly (``guestfwd``), at ``PARENT_HOST`` in the guest.
A relay inside the guest also listens on those ports of the guest's own loopback, so addresses
the parent hands out as 127.0.0.1 (the primary and Redis a cluster_member uses) work unchanged.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import hub
from hub.provisioning.base import ProvisionError

BUSYBOX = Path("/bin/busybox")  # busybox-static: the initramfs has no libc of its own
APPLETS = ("sh", "mount", "mkdir", "insmod", "ip", "cat", "cut", "chmod", "ln", "poweroff")
# The kernel modules the guest needs, each loaded after what modules.dep says it depends on.
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_net", "qemu_fw_cfg")
PARENT_HOST = "10.0.2.100"  # the parent's loopback as the guest sees it (guestfwd)
GUEST_ADDRESS, GUEST_GATEWAY = "10.0.2.15/24", "10.0.2.2"
GUEST_API_PORT, GUEST_FEDERATION_PORT = 8080, 8443
GUEST_STATE_DIR = "/var/lib/powernode"
BOOTED = "[guest] booted in"  # the init's line once the shares are mounted and the network is up
STARTING = "[guest] starting the child"
EXITED = "[guest] the child exited"


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


def module_chain(kernel: GuestKernel, names: Iterable[str]) -> list[Path]:
    """The module files for names and everything they depend on, in load order, each once."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[Path(target).name.split(".ko")[0]] = [target, *reversed(rest.split())]
    chain: list[Path] = []
    for name in names:
        if name not in deps:
            raise ProvisionError(f"kernel module {name} is not in {kernel.modules_dir}/modules.dep")
        target, *needed = deps[name]
        for relative in (*needed, target):
            path = kernel.modules_dir / relative
            if path not in chain:
                chain.append(path)
    return chain


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


def _guest_modes(root: Path, *, private: list[Path]) -> None:
    """The guest's own modes, not this process's umask (077 for a hub): its server users must
    traverse its directories and read /etc/passwd; only the listed files stay root's alone."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        elif path in private:
            path.chmod(0o600)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)


def pack_cpio(root: Path, dest: Path) -> None:
    """Write root as a newc cpio archive (what the kernel unpacks as its initramfs), files as root."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with dest.open("wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=root, input="\n".join(names).encode(), stdout=out, check=True,
        )  # fmt: skip


def shared_dirs() -> list[Path]:
    """What the guest mounts read-only: /usr, the Python installation, the virtualenv, the source."""
    source = Path(hub.__file__).resolve().parent.parent
    candidates = [Path("/usr"), Path(sys.base_prefix).resolve(), Path(sys.prefix).absolute(), source]
    kept: list[Path] = []
    for path in candidates:
        if not any(path == k or path.is_relative_to(k) for k in kept):
            kept = [k for k in kept if not k.is_relative_to(path)] + [path]
    return kept


def virtfs_args(shares: Sequence[Path]) -> list[str]:
    args: list[str] = []
    for index, path in enumerate(shares):
        value = f"local,path={_opt(str(path))},mount_tag=share{index},security_model=none,readonly=on"
        args += ["-virtfs", value + ",multidevs=remap"]
    return args


def network_args(*, forwards: Sequence[int], hostfwd: Mapping[int, int]) -> list[str]:
    """User networking that reaches only the forwarded parent ports; hostfwd maps host → guest port."""
    parts = ["user", "id=n0", "restrict=on"]
    nc = f"{BUSYBOX} nc 127.0.0.1"
    parts += [f"guestfwd=tcp:{PARENT_HOST}:{port}-cmd:{nc} {port}" for port in forwards]
    parts += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in hostfwd.items()]
    return ["-netdev", ",".join(parts), "-device", "virtio-net-pci,netdev=n0"]


def _opt(value: str) -> str:
    return value.replace(",", ",,")


INIT = """#!/bb/sh
export PATH=/bb
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/shm /dev/pts && mount -t tmpfs -o mode=1777 shm /dev/shm && mount -t devpts devpts /dev/pts
echo 1 > /proc/sys/kernel/printk
for module in {modules}; do insmod "/modules/$module" || echo "[guest] insmod $module failed"; done
{mounts}
ip link set lo up
ip addr add {address} dev eth0 && ip link set eth0 up && ip route add default via {gateway}
chmod 1777 /tmp
echo "{booted} $(cut -d' ' -f1 /proc/uptime) s"
{bare}
. /etc/powernode/env
export HOME=/root LANG=C.UTF-8 PATH="{venv_bin}:/usr/sbin:/usr/bin"
{python} -m hub.provisioning.guest_relay {parent_host} {relay_ports} &
echo "{starting}"
{python} -m hub.provisioning.local_boot --guest --work-dir {state} --port {api_port} \\
  --federation-port {federation_port} --spawn-mode {mode}
echo "{exited} (exit $?); powering off"
poweroff -f
"""


def init_script(
    *,
    modules: Sequence[str],
    shares: Sequence[Path],
    relay_ports: Sequence[int],
    mode: str,
    bare: bool = False,
) -> str:
    """The guest's /init; bare: power off once booted (shares mounted, network up), running nothing."""
    mount = "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose"
    mounts = "\n".join(
        f"mkdir -p {shlex.quote(str(path))} && {mount} share{index} {shlex.quote(str(path))}"
        f' || echo "[guest] mounting {shlex.quote(str(path))} failed"'
        for index, path in enumerate(shares)
    )
    python = Path(sys.prefix).absolute() / "bin" / "python"
    return INIT.format(
        modules=" ".join(modules),
        mounts=mounts,
        address=GUEST_ADDRESS,
        gateway=GUEST_GATEWAY,
        booted=BOOTED,
        bare="poweroff -f" if bare else "",
        starting=STARTING,
        exited=EXITED,
        venv_bin=shlex.quote(str(python.parent)),
        python=shlex.quote(str(python)),
        parent_host=PARENT_HOST,
        relay_ports=" ".join(str(p) for p in relay_ports),
        state=GUEST_STATE_DIR,
        api_port=GUEST_API_PORT,
        federation_port=GUEST_FEDERATION_PORT,
        mode=shlex.quote(mode),
    )


def _modules_dir(kernel: GuestKernel, cache: Path) -> Path:
    """The decompressed modules, once per kernel, in cache/<version>/ (names in load order)."""
    directory = cache / f"modules-{kernel.version}"
    order = directory / "order"
    if not order.is_file():
        staging = cache / f".modules-{kernel.version}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        names = []
        for path in module_chain(kernel, MODULES):
            name = path.name.split(".ko")[0] + ".ko"
            (staging / name).write_bytes(decompressed_module(path))
            names.append(name)
        (staging / "order").write_text("\n".join(names))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    return directory


def build_initramfs(
    kernel: GuestKernel,
    dest: Path,
    *,
    cache: Path,
    mode: str,
    env: Mapping[str, str],
    relay_ports: Sequence[int],
    bare: bool = False,
) -> Path:
    """Write the guest's initramfs to dest (0600: its env may name the parent's ports) and return it."""
    if not BUSYBOX.is_file():
        raise ProvisionError(f"{BUSYBOX} not found; install busybox-static to boot the development guest")
    if shutil.which("cpio") is None:
        raise ProvisionError("cpio not found; install cpio to build the development guest")
    modules = _modules_dir(kernel, cache)
    shares = shared_dirs()
    root = dest.with_name(dest.name + ".root")
    shutil.rmtree(root, ignore_errors=True)
    for directory in ("bb", "dev", "proc", "sys", "tmp", "run", "root", "usr", "etc/powernode", "modules"):
        (root / directory).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path("/", link).is_symlink():
            (root / link).symlink_to(os.readlink(Path("/", link)))
    shutil.copy2(BUSYBOX, root / "bb/busybox")
    for applet in APPLETS:
        (root / "bb" / applet).symlink_to("busybox")
    names = (modules / "order").read_text().split()
    for name in names:
        shutil.copy2(modules / name, root / "modules" / name)
    for name in ("passwd", "group"):  # the server users PostgreSQL runs as; no shadow
        shutil.copy2(Path("/etc", name), root / "etc" / name)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/powernode/env").write_text(
        "".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
    )
    init = root / "init"
    init.write_text(init_script(modules=names, shares=shares, relay_ports=relay_ports, mode=mode, bare=bare))
    init.chmod(0o755)
    _guest_modes(root, private=[root / "etc/powernode/env"])
    dest.unlink(missing_ok=True)
    dest.touch(mode=0o600)
    pack_cpio(root, dest)
    shutil.rmtree(root, ignore_errors=True)
    return dest


def cache_dir(data_dir: Path) -> Path:
    directory = data_dir / "qemu-cache"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory

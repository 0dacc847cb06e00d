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

import asyncio
import compileall
import dataclasses
import gzip
import logging
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
from hub.embedded.pgconf import ClusterState
from hub.provisioning.base import ProvisionError

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")  # busybox-static: the initramfs has no libc of its own
APPLETS = ("sh", "mount", "mkdir", "insmod", "ip", "cat", "cut", "chmod", "ln", "nc", "poweroff")
# The kernel modules the guest needs, each loaded after what modules.dep says it depends on.
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_net", "qemu_fw_cfg")
PARENT_HOST = "10.0.2.100"  # the parent's loopback as the guest sees it (guestfwd)
GUEST_ADDRESS, GUEST_GATEWAY = "10.0.2.15/24", "10.0.2.2"
GUEST_API_PORT, GUEST_FEDERATION_PORT = 8080, 8443
GUEST_STATE_DIR = "/var/lib/powernode"
GUEST_POSTGRES_PORT = 5432  # the child hub's own PostgreSQL in the guest, when seeded
GUEST_STANDBY_PORT = 15432  # a cluster_member's standby in the guest (the first port no forward uses)
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


def pack_cpio(root: Path, dest: Path, *, append: bool = False, owners: bool = False) -> None:
    """Write root as a newc cpio archive (what the kernel unpacks as its initramfs), files as root
    unless owners (then as they are here). append: after what dest holds (the kernel unpacks
    concatenated archives one after the other)."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with dest.open("ab" if append else "wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", *(() if owners else ("-R", "0:0"))],
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


def compile_source() -> None:
    """Byte-compile the project's own packages where they live, as Python would on import here.

    The guest mounts them read-only: without up-to-date .pyc files beside them every Python process
    in the guest compiles every module it imports again, under emulation. Cheap once done (only
    changed files are compiled); a tree this process may not write is left as it is.
    """
    source = Path(hub.__file__).resolve().parent.parent
    for package in ("hub", "child_agent", "shared_contract", "migrations"):
        if (source / package).is_dir() and not compileall.compile_dir(source / package, quiet=2):
            log.info("could not byte-compile all of %s; the guest compiles what is missing", source / package)


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
export HOME=/root LANG=C.UTF-8 PATH="{venv_bin}:/usr/sbin:/usr/bin" PYTHONDONTWRITEBYTECODE=1
for port in {relay_ports}; do nc -ll -p "$port" -e /bb/nc {parent_host} "$port" & done
up() {{ cut -d' ' -f1 /proc/uptime; }}
echo "{starting} at $(up) s"
# As the child image's systemd units: the agent's first run (oneshot), then the hub if it succeeded.
mkdir -p -m 0700 {data}
echo "[boot] first run (uptime $(up) s): {first_run}"
{venv_bin}/powernode-child-agent {first_run}
code=$?
if [ "$code" = 0 ]; then
  echo "[boot] starting the child hub (uptime $(up) s): {serve}"
  {venv_bin}/powernode-hub {serve}
  code=$?
else
  echo "[boot] first run failed (exit $code); the child hub is not started"
fi
echo "{exited} (exit $code); powering off"
poweroff -f
"""


def init_script(
    *,
    shares: Sequence[Path],
    relay_ports: Sequence[int],
    mode: str,
    bare: bool = False,
) -> str:
    """The guest's /init; bare: power off once booted (shares mounted, network up), running nothing.

    Shell and busybox only until the agent starts: every Python start-up costs seconds under
    emulation. The relay listens on each of the parent's forwarded ports on the guest's own
    loopback and carries each connection to the same port at PARENT_HOST (one busybox nc per
    connection), so the 127.0.0.1 addresses the parent hands out work unchanged in the guest.
    """
    mount = "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose"
    mounts = "\n".join(
        f"mkdir -p {shlex.quote(str(path))} && {mount} share{index} {shlex.quote(str(path))}"
        f' || echo "[guest] mounting {shlex.quote(str(path))} failed"'
        for index, path in enumerate(shares)
    )
    data = f"{GUEST_STATE_DIR}/data"
    first_run = f"first-run --state-dir {data}/agent"
    if mode == "cluster_member":
        standby_port = next(p for p in range(GUEST_STANDBY_PORT, 65536) if p not in relay_ports)
        first_run += f" --standby-dir {GUEST_STATE_DIR}/standby/pgdata --standby-port {standby_port}"
    serve = (
        f"serve --data-dir {data} --port {GUEST_API_PORT} --federation-port {GUEST_FEDERATION_PORT}"
        " --host 0.0.0.0"  # reached through QEMU's host forwards, at the guest's NIC address
    )
    return INIT.format(
        modules="{modules}",  # filled in by pack_initramfs
        mounts=mounts,
        address=GUEST_ADDRESS,
        gateway=GUEST_GATEWAY,
        booted=BOOTED,
        bare="poweroff -f" if bare else "",
        starting=STARTING,
        exited=EXITED,
        venv_bin=shlex.quote(str(Path(sys.prefix).absolute() / "bin")),
        parent_host=PARENT_HOST,
        relay_ports=" ".join(str(p) for p in relay_ports),
        data=data,
        first_run=first_run,
        serve=serve,
    )


def _cached_modules(kernel: GuestKernel, cache: Path, names: Iterable[str]) -> list[Path]:
    """The decompressed module files for names and their dependencies, in load order, each
    decompressed once per kernel into cache/modules-<version>/."""
    directory = cache / f"modules-{kernel.version}"
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for path in module_chain(kernel, names):
        plain = directory / (path.name.split(".ko")[0] + ".ko")
        if not plain.is_file():
            staging = plain.with_name(f".{plain.name}.{os.getpid()}")
            staging.write_bytes(decompressed_module(path))
            staging.rename(plain)
        files.append(plain)
    return files


def pack_initramfs(
    kernel: GuestKernel,
    dest: Path,
    *,
    cache: Path,
    init: str,
    modules: Sequence[str] = MODULES,
    applets: Sequence[str] = APPLETS,
    files: Mapping[str, str] | None = None,
    private: Sequence[str] = (),
) -> Path:
    """Write a busybox initramfs to dest (0600) and return it: busybox and its applets in /bb,
    the decompressed modules (with their dependencies) in /modules, ``files`` (path in the
    guest → text) and ``init`` as /init. ``init`` may use ``{modules}``: the module files in load
    order. Files listed in ``private`` stay 0600; everything else gets the guest's usual modes."""
    if not BUSYBOX.is_file():
        raise ProvisionError(f"{BUSYBOX} not found; install busybox-static to boot the development guest")
    if shutil.which("cpio") is None:
        raise ProvisionError("cpio not found; install cpio to build the development guest")
    module_files = _cached_modules(kernel, cache, modules)
    root = dest.with_name(dest.name + ".root")
    shutil.rmtree(root, ignore_errors=True)
    for directory in ("bb", "dev", "proc", "sys", "tmp", "run", "root", "usr", "etc", "modules"):
        (root / directory).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):  # as on this machine, for the /usr shared over 9p
        if Path("/", link).is_symlink():
            (root / link).symlink_to(os.readlink(Path("/", link)))
    shutil.copy2(BUSYBOX, root / "bb/busybox")
    for applet in applets:
        (root / "bb" / applet).symlink_to("busybox")
    for path in module_files:
        shutil.copyfile(path, root / "modules" / path.name)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "init").write_text(init.replace("{modules}", " ".join(p.name for p in module_files)))
    (root / "init").chmod(0o755)
    _guest_modes(root, private=[root / name for name in private])
    dest.unlink(missing_ok=True)
    dest.touch(mode=0o600)
    pack_cpio(root, dest)
    shutil.rmtree(root, ignore_errors=True)
    return dest


def can_seed_database(mode: str) -> bool:
    """Whether seed_database can prepare this child's database: not for a cluster_member (its hub
    uses the parent's primary), and only when this process runs PostgreSQL as the same server user
    the guest will (as root: the guest's /etc/passwd is this machine's)."""
    return mode != "cluster_member" and os.geteuid() == 0


def seed_database(root: Path, *, avoid_ports: Sequence[int] = ()) -> None:
    """Initialise, bootstrap and migrate the child hub's embedded PostgreSQL natively, laid out
    under root as the guest's GUEST_STATE_DIR/data, with the guest's paths in its state file.

    Under emulation initdb, the bootstrap and the migrations take the guest a minute and more;
    here a few seconds. Its passwords are this spawn's own (random, made here, as the child hub
    would make them) and travel only in the 0600 initramfs. The guest's hub finds the cluster
    initialised, starts it (on GUEST_POSTGRES_PORT, or the next port none of avoid_ports takes)
    and finds the schema at head.
    """
    from hub import migrate
    from hub.embedded.pgconf import socket_dir_for
    from hub.embedded.services import EmbeddedServices

    guest_data = Path(GUEST_STATE_DIR) / "data"
    data = root / guest_data.relative_to("/")
    # Without fsync: nothing here must survive a crash of this machine, and the clean shutdown
    # below leaves every page in the files the archive is made from. The guest's runs durable.
    services = EmbeddedServices(data, redis=False, durable=False)
    services.start()
    try:
        asyncio.run(migrate.upgrade(services.database_url))
    finally:
        services.stop()
    state = ClusterState.load(services.postgres.state_file)
    assert state is not None
    shutil.rmtree(state.socket_dir, ignore_errors=True)
    guest_state = dataclasses.replace(
        state,
        port=next(p for p in range(GUEST_POSTGRES_PORT, 65536) if p not in avoid_ports),
        socket_dir=str(socket_dir_for(guest_data / "postgres")),
        durable=True,
    )
    guest_state.save(services.postgres.state_file)


def build_initramfs(
    kernel: GuestKernel,
    dest: Path,
    *,
    cache: Path,
    mode: str,
    env: Mapping[str, str],
    relay_ports: Sequence[int],
    bare: bool = False,
    seed: Path | None = None,
) -> Path:
    """Write the development guest's initramfs to dest (0600: its env may name the parent's ports);
    seed: a tree from seed_database, appended with its owners (the cluster is the server user's)."""
    # The server users PostgreSQL runs as; no shadow.
    files = {f"etc/{name}": Path("/etc", name).read_text() for name in ("passwd", "group")}
    files["etc/hosts"] = "127.0.0.1 localhost\n"
    files["etc/powernode/env"] = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    init = init_script(shares=shared_dirs(), relay_ports=relay_ports, mode=mode, bare=bare)
    pack_initramfs(kernel, dest, cache=cache, init=init, files=files, private=["etc/powernode/env"])
    if seed is not None:
        pack_cpio(seed, dest, append=True, owners=True)
    return dest


def cache_dir(data_dir: Path) -> Path:
    directory = data_dir / "qemu-cache"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory

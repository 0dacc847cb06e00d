"""The qemu provisioner: a real guest that reads the spawn payload through QEMU fw_cfg.

Each non-empty payload key becomes one ``-fw_cfg name=opt/com.powernode/<key>,file=<file>``
(spec/wire-compat.md); the token travels in a 0600 file, never on the command line. Limits are
checked before anything is staged or started (``fwcfg_limits``).

fw_cfg is fixed when QEMU starts: a running guest never sees new entries. ``reinject`` (token
rotation) therefore restages the files and restarts the guest with the command it was started with,
its ``-fw_cfg`` arguments rebuilt for the new key set. The guest boots again.

A template whose ``vm`` names neither a kernel nor a disk image gets the development guest
(``hub.provisioning.guest``): this machine's kernel, an initramfs built here, the installed project
over 9p, and user networking with ``restrict=on`` whose only way out is an explicit forward to each
parent port on 127.0.0.1 the child needs. The payload's ``parent_url`` is then the URL as the guest
sees it (``guest.PARENT_HOST``), which the parent's federation certificate names.

The guest runs detached with ``-daemonize``: QEMU forks, calls setsid, and its first process exits
only once the machine is set up, so start-up errors surface here and the hub holds no child. The pid
comes from ``-pidfile``; a pid counts only while /proc shows a live process whose command line names
that pidfile, so a recycled pid is never signalled. Blocking work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.provisioning import guest
from hub.provisioning.base import NodeSpec, ProvisionError, ProvisionResult, TemplateSpec
from hub.provisioning.fwcfg_limits import check_fw_cfg_limits, remove_staged, stage_fw_cfg, staged_sizes
from shared_contract.payload import SpawnPayload, qemu_fw_cfg_args

if TYPE_CHECKING:
    from hub.config import Settings

logger = logging.getLogger(__name__)

FW_CFG_DIR = "fw_cfg"
SERIAL_LOG = "serial.log"
QEMU_LOG = "qemu.log"
PIDFILE = "qemu.pid"
INITRD = "initramfs.cpio"
NODE_DISK = "disk.qcow2"  # this node's own writes over the template's image, which stays untouched
# no_timer_check: on a loaded host an emulated CPU can miss the boot-time IO-APIC timer check and panic.
DEVELOPMENT_APPEND = "console=ttyS0 panic=-1 quiet no_timer_check"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TCG_TIMEOUT_FACTOR = 20
START_TIMEOUT_S = 30.0
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.05


class VmSettings(BaseModel):
    """A template's ``vm`` settings, checked; shared by the QEMU command line and libvirt XML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    disk_image: Path | None = None
    memory_mb: int = Field(default=512, ge=64, strict=True)
    cpus: int = Field(default=1, ge=1, strict=True)
    network: Literal["none", "user"] = "none"
    qemu_binary: str = Field(default="qemu-system-x86_64", min_length=1)
    accel: Literal["tcg", "kvm"] = "tcg"

    @classmethod
    def from_template(cls, template: TemplateSpec) -> VmSettings:
        """Parse template.vm; ProvisionError naming the first bad or unknown setting."""
        try:
            return cls.model_validate(template.vm)
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(str(part) for part in ("vm", *error["loc"]))
            raise ProvisionError(f"Template {template.id!r}: {where}: {error['msg']}") from e

    @field_validator("kernel", "initrd", "disk_image")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return path.absolute() if path else None  # QEMU -daemonize changes to / once started

    @model_validator(mode="after")
    def _bootable(self) -> VmSettings:
        if (self.initrd or self.append) and not self.kernel:
            raise ValueError("initrd and append need a kernel")
        return self

    @property
    def development(self) -> bool:
        """Neither a kernel nor a disk image: boot the development guest built from this machine."""
        return not (self.kernel or self.disk_image)

    @property
    def disk_format(self) -> str:
        """The disk image format, from its suffix; stated so QEMU never probes a raw image."""
        return "qcow2" if self.disk_image and self.disk_image.suffix == ".qcow2" else "raw"

    def files(self) -> dict[str, Path]:
        """The host files the guest boots from, by setting name."""
        paths = {"kernel": self.kernel, "initrd": self.initrd, "disk_image": self.disk_image}
        return {name: path for name, path in paths.items() if path}


def qemu_opt_value(value: str) -> str:
    """Escape a value for QEMU's option parser, which reads ',,' as a literal comma."""
    return value.replace(",", ",,")


def qemu_command(
    settings: VmSettings,
    *,
    work_dir: Path,
    fw_cfg_files: Mapping[str, Path],
    forwards: Sequence[int] = (),
) -> list[str]:
    """Build the full QEMU command line for a guest whose payload is staged in fw_cfg_files.

    With ``network: user`` the guest gets restricted user networking: the only way out is a forward
    of each of the parent's loopback ports in ``forwards``, at ``guest.PARENT_HOST`` (DHCP works).
    """
    network = (
        guest.network_args(forwards=forwards, hostfwd={}) if settings.network == "user" else ["-nic", "none"]
    )
    command = [
        settings.qemu_binary,
        *("-accel", settings.accel, "-m", str(settings.memory_mb), "-smp", str(settings.cpus)),
        *("-display", "none", "-monitor", "none", "-serial", f"file:{work_dir / SERIAL_LOG}"),
        *("-no-reboot", "-daemonize", "-pidfile", str(work_dir / PIDFILE)),
        *_boot_args(settings, work_dir),
        *network,
    ]
    return with_fw_cfg(command, fw_cfg_files)


def with_fw_cfg(command: Sequence[str], fw_cfg_files: Mapping[str, Path]) -> list[str]:
    """Return command with its -fw_cfg arguments replaced by one per staged file (limits checked)."""
    check_fw_cfg_limits(staged_sizes(fw_cfg_files))
    kept: list[str] = []
    args = iter(command)
    for arg in args:
        if arg == "-fw_cfg":
            next(args, None)  # drop the option's value with it
        else:
            kept.append(arg)
    return kept + qemu_fw_cfg_args(dict(fw_cfg_files))


def _boot_args(settings: VmSettings, work_dir: Path) -> list[str]:
    args: list[str] = []
    if settings.kernel:
        args += ["-kernel", str(settings.kernel)]
    if settings.initrd:
        args += ["-initrd", str(settings.initrd)]
    if settings.append:
        args += ["-append", settings.append]
    if settings.disk_image:
        drive = f"file={qemu_opt_value(str(work_dir / NODE_DISK))},format=qcow2,if=virtio"
        args += ["-drive", drive]
    return args


def node_disk(settings: VmSettings, work_dir: Path) -> Path:
    """The node's own disk: a qcow2 overlay backed by the template's image, made once per node (a
    reinject boots the same disk again). QEMU writes and locks only the overlay, so any number of
    children can boot from one image and the image itself never changes."""
    disk = work_dir / NODE_DISK
    if disk.exists() or settings.disk_image is None:
        return disk
    work_dir.mkdir(parents=True, exist_ok=True)
    image = settings.disk_image.absolute()
    partial = disk.with_suffix(".partial")  # renamed whole: a kill -9 mid-create leaves no half disk
    command = [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(image),
        "-F",
        settings.disk_format,
        str(partial),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as e:
        raise ProvisionError(
            f"qemu-img could not make the node's disk over {image}: {e.stderr.strip()}"
        ) from e
    partial.replace(disk)
    return disk


def preflight(settings: VmSettings) -> None:
    """Refuse to start when the QEMU binary or a kernel, initrd or disk image file is missing."""
    if shutil.which(settings.qemu_binary) is None:
        raise ProvisionError(f"QEMU binary {settings.qemu_binary!r} not found; install qemu-system-x86")
    for label, path in settings.files().items():
        if not path.is_file():
            raise ProvisionError(f"vm.{label} {str(path)!r} is not a file")
    if settings.disk_image and shutil.which("qemu-img") is None:
        raise ProvisionError(
            "qemu-img not found (each node boots its own overlay of the image); install qemu-utils"
        )


def guest_pid(pidfile: Path) -> int | None:
    """Return the pid of the live QEMU process that wrote pidfile, or None."""
    try:
        pid = int(pidfile.read_text().strip())
        proc = Path("/proc", str(pid))
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    # A daemonized QEMU's parent is PID 1 (or a subreaper), which may never reap it: a zombie is stopped.
    if state in ("Z", "X") or os.fsencode(pidfile) not in argv:
        return None
    return pid


def private_work_dir(work_dir: Path) -> None:
    """work_dir and its parent (the data dir's nodes/) exist, 0700."""
    for directory in (work_dir.parent, work_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)


def start_guest(command: Sequence[str], work_dir: Path) -> int:
    """Run QEMU (which daemonizes) and return the guest's pid; ProvisionError if it did not start."""
    private_work_dir(work_dir)
    for name in (QEMU_LOG, SERIAL_LOG):  # the console may show what the guest prints: owner only
        (work_dir / name).unlink(missing_ok=True)
        (work_dir / name).touch(mode=0o600)
    with (work_dir / QEMU_LOG).open("wb") as log:
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                timeout=START_TIMEOUT_S, start_new_session=True, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise ProvisionError(f"QEMU did not finish starting within {START_TIMEOUT_S:.0f} s") from e
    if done.returncode != 0:
        raise ProvisionError(f"QEMU failed to start (exit {done.returncode}): {_last_line(work_dir)}")
    pid = guest_pid(work_dir / PIDFILE)
    if pid is None:
        raise ProvisionError(f"QEMU exited right after starting: {_last_line(work_dir)}")
    return pid


def stop_guest(pidfile: Path, *, timeout_s: float) -> None:
    """Stop the guest: SIGTERM, then SIGKILL when it is still there after timeout_s."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, KILL_WAIT_S)):
        pid = guest_pid(pidfile)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_stopped(pidfile, wait_s):
            return
    raise ProvisionError(f"QEMU guest {pidfile} did not stop after SIGKILL")


def _wait_stopped(pidfile: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while guest_pid(pidfile) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def _last_line(work_dir: Path) -> str:
    """The last line QEMU wrote to its log: paths and QEMU's own words, never payload values."""
    lines = (work_dir / QEMU_LOG).read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def guest_url(url: str) -> str:
    """url as the development guest reaches it: a loopback host becomes guest.PARENT_HOST."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        return url
    netloc = guest.PARENT_HOST + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _loopback_port(url: str | None, default: int) -> int | None:
    parts = urlsplit(url or "")
    return (parts.port or default) if parts.hostname in LOOPBACK_HOSTS else None


def parent_forwards(settings: Settings | None, payload: SpawnPayload) -> list[int]:
    """The parent's loopback ports the guest needs: federation, and for cluster_member PostgreSQL + Redis."""
    ports = [_loopback_port(payload.parent_url, 443)]
    if payload.spawn_mode == "cluster_member" and settings is not None:
        from hub.replication.primary import PrimaryEndpoint
        from hub.replication.redis_acl import advertised_url

        primary = PrimaryEndpoint.of(settings)
        ports.append(primary.advertised_port if primary.advertised_host in LOOPBACK_HOSTS else None)
        ports.append(_loopback_port(advertised_url(settings), 6379))
    return list(dict.fromkeys(p for p in ports if p is not None))


_EXITED = re.compile(re.escape(guest.EXITED) + r" \(exit (\d+)\)")
_BOOTED = re.compile(re.escape(guest.BOOTED) + r" ([0-9.]+) s")


def console_text(work_dir: Path, *, limit: int = 1 << 20) -> str:
    """The end of the guest's serial console (at most limit bytes), as text."""
    path = work_dir / SERIAL_LOG
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def observed_state(work_dir: Path, *, development: bool) -> tuple[str, float | None]:
    """(booting | running | stopped | failed, the guest's boot seconds if it said) from pid and console."""
    text = console_text(work_dir)
    booted = _BOOTED.search(text)
    boot_seconds = float(booted.group(1)) if booted else None
    if guest_pid(work_dir / PIDFILE) is not None:
        return ("booting" if development and not booted else "running"), boot_seconds
    exited = _EXITED.findall(text)
    if development and (not exited or exited[-1] != "0"):
        return "failed", boot_seconds
    return "stopped", boot_seconds


class QemuProvisioner:
    """Start, rotate, inspect and stop one QEMU guest per node, in node.work_dir."""

    name = "qemu"

    def __init__(self, settings: Settings | None = None, *, stop_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.stop_timeout_s = stop_timeout_s

    def __repr__(self) -> str:
        return f"QemuProvisioner(stop_timeout_s={self.stop_timeout_s})"

    async def provision(
        self, *, node: NodeSpec, template: TemplateSpec, payload: SpawnPayload
    ) -> ProvisionResult:
        settings = VmSettings.from_template(template)
        return await asyncio.to_thread(self._provision, node, settings, payload)

    async def reinject(self, *, node: NodeSpec, payload: SpawnPayload) -> ProvisionResult:
        return await asyncio.to_thread(self._reinject, node, payload)

    async def status(self, *, node: NodeSpec) -> str:
        development = node.details.get("guest") == "development"
        return observed_state(node.work_dir.absolute(), development=development)[0]

    async def destroy(self, *, node: NodeSpec) -> None:
        await asyncio.to_thread(self._destroy, node.work_dir.absolute())

    def _provision(self, node: NodeSpec, settings: VmSettings, payload: SpawnPayload) -> ProvisionResult:
        preflight(settings)
        work_dir = node.work_dir.absolute()
        if guest_pid(work_dir / PIDFILE) is not None:
            raise ProvisionError(f"Node {node.id} already has a running QEMU guest; reinject or destroy it")
        if settings.development:
            return self._provision_development(node, work_dir, settings, payload)
        node_disk(settings, work_dir)
        if settings.network != "user":
            files = stage_fw_cfg(payload, work_dir / FW_CFG_DIR)
            return self._start(work_dir, qemu_command(settings, work_dir=work_dir, fw_cfg_files=files))
        # An image guest on the restricted network: it reaches the parent as the guest sees it.
        forwards = parent_forwards(self.settings, payload)
        files = stage_fw_cfg(_guest_payload(payload), work_dir / FW_CFG_DIR)
        command = qemu_command(settings, work_dir=work_dir, fw_cfg_files=files, forwards=forwards)
        result = self._start(work_dir, command)
        result.details.update(
            guest="image", parent_forwards=forwards, guest_parent_url=guest_url(payload.parent_url)
        )
        return result

    def _provision_development(
        self, node: NodeSpec, work_dir: Path, settings: VmSettings, payload: SpawnPayload
    ) -> ProvisionResult:
        kernel = guest.find_kernel()
        if kernel is None:
            raise ProvisionError("No readable /boot/vmlinuz-* with its modules; install linux-image-amd64")
        from hub.embedded.process import free_port
        from hub.provisioning.local import _child_env

        private_work_dir(work_dir)
        forwards = parent_forwards(self.settings, payload)
        api_port, federation_port = free_port(), free_port()
        env = _child_env(self.settings, port=api_port) if self.settings else {}
        if settings.accel == "tcg":  # every instruction emulated: initdb alone may take minutes
            env.setdefault("POWERNODE_EMBEDDED_TIMEOUT_FACTOR", str(TCG_TIMEOUT_FACTOR))
        data_dir = self.settings.data_dir if self.settings else work_dir
        guest.compile_source()
        with contextlib.ExitStack() as stack:
            seed = None
            if guest.can_seed_database(payload.spawn_mode):
                seed = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pn-seed-", dir="/tmp")))
                guest.seed_database(seed, avoid_ports=forwards)
            initrd = guest.build_initramfs(
                kernel,
                work_dir / INITRD,
                cache=guest.cache_dir(data_dir),
                mode=payload.spawn_mode,
                env=env,
                relay_ports=forwards,
                seed=seed,
            )
        hostfwd = {api_port: guest.GUEST_API_PORT, federation_port: guest.GUEST_FEDERATION_PORT}
        command = [
            settings.qemu_binary,
            *("-accel", settings.accel, "-m", str(settings.memory_mb), "-smp", str(settings.cpus)),
            *("-display", "none", "-monitor", "none", "-serial", f"file:{work_dir / SERIAL_LOG}"),
            *("-no-reboot", "-daemonize", "-pidfile", str(work_dir / PIDFILE)),
            *("-kernel", str(kernel.path), "-initrd", str(initrd), "-append", DEVELOPMENT_APPEND),
            *guest.virtfs_args(guest.shared_dirs()),
            *guest.network_args(forwards=forwards, hostfwd=hostfwd),
        ]
        files = stage_fw_cfg(_guest_payload(payload), work_dir / FW_CFG_DIR)
        result = self._start(work_dir, with_fw_cfg(command, files))
        result.details.update(
            guest="development",
            work_dir=str(work_dir),
            url=f"http://127.0.0.1:{api_port}",
            federation_url=f"https://127.0.0.1:{federation_port}",
            parent_forwards=forwards,
            guest_parent_url=guest_url(payload.parent_url),
        )
        return ProvisionResult(state="booting", provider_ref=result.provider_ref, details=result.details)

    def _reinject(self, node: NodeSpec, payload: SpawnPayload) -> ProvisionResult:
        command = node.details.get("command")
        if not isinstance(command, list) or not command:
            raise ProvisionError(f"Node {node.id} has no recorded QEMU command; provision it first")
        development = node.details.get("guest") == "development"
        if node.details.get("guest") in ("development", "image"):
            payload = _guest_payload(payload)
        work_dir = node.work_dir.absolute()
        files = stage_fw_cfg(payload, work_dir / FW_CFG_DIR)  # refuses before the old guest is stopped
        stop_guest(work_dir / PIDFILE, timeout_s=self.stop_timeout_s)
        result = self._start(work_dir, with_fw_cfg(command, files))
        details = {**node.details, **result.details}
        state = "booting" if development else result.state
        return ProvisionResult(state=state, provider_ref=result.provider_ref, details=details)

    def _start(self, work_dir: Path, command: list[str]) -> ProvisionResult:
        try:
            pid = start_guest(command, work_dir)
        except ProvisionError:
            stop_guest(work_dir / PIDFILE, timeout_s=self.stop_timeout_s)  # a start that timed out
            remove_staged(work_dir / FW_CFG_DIR)
            raise
        logger.info("Started QEMU guest in %s (pid %d)", work_dir, pid)
        details = {
            "pid": pid,
            "serial_log": str(work_dir / SERIAL_LOG),
            "console_log": str(work_dir / SERIAL_LOG),
            "command": command,
            "fw_cfg_dir": str(work_dir / FW_CFG_DIR),
            "started_at": time.time(),
        }
        return ProvisionResult(state="running", provider_ref=str(pid), details=details)

    def _destroy(self, work_dir: Path) -> None:
        stop_guest(work_dir / PIDFILE, timeout_s=self.stop_timeout_s)
        remove_staged(work_dir / FW_CFG_DIR)
        (work_dir / PIDFILE).unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        logger.info("Stopped QEMU guest in %s and removed it", work_dir)


def _guest_payload(payload: SpawnPayload) -> SpawnPayload:
    return payload.model_copy(update={"parent_url": guest_url(payload.parent_url)})

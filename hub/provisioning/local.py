"""The `local` provisioner: a "VM" is a directory on this machine.

The directory holds the guest's fw_cfg tree (`by_name/opt/com.powernode/<key>/raw`, files 0600)
and the child's data dir; a boot process plays the guest's init: it runs the agent's first run
and, only if that succeeds, the child's own hub (its own embedded PostgreSQL and Redis on free
loopback ports). Used by the embedded default, the demo and the end-to-end tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from hub.config import Settings
from hub.embedded.process import free_port, harden_data_dir, pid_alive, wait_until
from hub.provisioning.base import NodeSpec, ProvisionResult, TemplateSpec
from shared_contract._files import make_private_dirs
from shared_contract.payload import SpawnPayload, write_fw_cfg_tree

# What a child inherits from its parent's environment: tuning, never the parent's services.
_INHERITED_PREFIXES = ("POWERNODE_FEDERATION_", "POWERNODE_LOG_", "PG_BIN", "PATH", "LANG", "LC_", "TZ")


def _child_env(settings: Settings, *, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_INHERITED_PREFIXES)}
    env.update(
        {
            "POWERNODE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "POWERNODE_PROVISIONER": "manual",
            "POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": str(
                settings.federation.heartbeat_interval_seconds
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class LocalProvisioner:
    name = "local"

    def __init__(self, settings: Settings):
        self.settings = settings

    def __repr__(self) -> str:
        return "LocalProvisioner()"

    async def provision(
        self, *, node: NodeSpec, template: TemplateSpec, payload: SpawnPayload
    ) -> ProvisionResult:
        make_private_dirs(node.work_dir)  # nodes/ too, not only the node's own directory
        node.work_dir.chmod(0o700)
        write_fw_cfg_tree(payload, node.work_dir / "by_name")
        return self._boot(node, payload)

    def _boot(self, node: NodeSpec, payload: SpawnPayload) -> ProvisionResult:
        port, federation_port = free_port(), free_port()
        data_dir = node.work_dir / "data"
        command = [
            sys.executable,
            "-m",
            "hub.provisioning.local_boot",
            "--work-dir",
            str(node.work_dir),
            "--port",
            str(port),
            "--federation-port",
            str(federation_port),
            "--spawn-mode",
            payload.spawn_mode,
        ]
        console = node.work_dir / "console.log"
        fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # an older console.log keeps its mode otherwise
        with os.fdopen(fd, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(self.settings, port=port),
                start_new_session=True,
            )
        (node.work_dir / "boot.pid").write_text(str(process.pid))
        return ProvisionResult(
            state="booting",
            provider_ref=str(process.pid),
            details={
                "pid": process.pid,
                "work_dir": str(node.work_dir),
                "data_dir": str(data_dir),
                "console_log": str(console),
                "url": f"http://127.0.0.1:{port}",
            },
        )

    async def reinject(self, *, node: NodeSpec, payload: SpawnPayload) -> ProvisionResult:
        """fw_cfg is read at boot: restage the tree, then reboot the "VM" so the agent reads it."""
        self._halt(node)
        write_fw_cfg_tree(payload, node.work_dir / "by_name")
        harden_data_dir(node.work_dir / "by_name")
        return self._boot(node, payload)

    async def status(self, *, node: NodeSpec) -> str:
        return "running" if pid_alive(self._pid(node)) else "stopped"

    async def destroy(self, *, node: NodeSpec) -> None:
        self._halt(node)
        shutil.rmtree(node.work_dir, ignore_errors=True)

    def _pid(self, node: NodeSpec) -> int | None:
        return _read_pid(node.work_dir / "boot.pid")

    def _halt(self, node: NodeSpec) -> None:
        halt(node.work_dir)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int | None, sig: int, *, group_kill: bool, timeout: float) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if not wait_until(lambda: not pid_alive(pid), timeout):
        try:
            os.killpg(pid, signal.SIGKILL) if group_kill else os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            pass


def halt(work_dir: Path, timeout: float = 60.0) -> None:
    """Power the "VM" off: SIGTERM the boot process (the child hub stops its own PostgreSQL and
    Redis), then a cluster_member's standby, which the agent started and nothing else owns here
    (SIGINT is PostgreSQL's fast shutdown; SIGQUIT its immediate one)."""
    _stop(_read_pid(work_dir / "boot.pid"), signal.SIGTERM, group_kill=True, timeout=timeout)
    _stop(
        _read_pid(work_dir / "standby" / "pgdata" / "postmaster.pid"),
        signal.SIGINT,
        group_kill=False,
        timeout=timeout,
    )


def child_data_dir(work_dir: Path) -> Path:
    return work_dir / "data"

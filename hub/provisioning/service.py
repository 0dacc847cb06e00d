"""Pick a provisioner and keep the node instance row in step with what it did."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from hub.config import Settings
from hub.provisioning.base import NodeSpec, Provisioner, ProvisionError
from hub.provisioning.manual import ManualProvisioner
from hub.provisioning.models import NodeInstance
from shared_contract.payload import SpawnPayload

log = logging.getLogger(__name__)


def get_provisioner(name: str, settings: Settings) -> Provisioner:
    if name == "manual":
        return ManualProvisioner()
    if name == "local":
        from hub.provisioning.local import LocalProvisioner

        return LocalProvisioner(settings)
    if name == "qemu":
        from hub.provisioning.qemu import QemuProvisioner

        return QemuProvisioner(settings)
    raise ProvisionError(f"Unknown provisioner {name!r}; provisioners: local, manual, qemu")


def node_work_dir(settings: Settings, node_id: object) -> Path:
    return settings.data_dir / "nodes" / str(node_id)


def node_spec(settings: Settings, node: NodeInstance) -> NodeSpec:
    return NodeSpec(
        id=node.id,
        name=node.name,
        region=node.region,
        work_dir=node_work_dir(settings, node.id),
        provider_ref=node.provider_ref,
        details=dict(node.details or {}),
    )


def payload_digest(payload: SpawnPayload) -> str:
    return hashlib.sha256(payload.to_json().encode()).hexdigest()


# Providers whose nodes run something this hub can watch: their state follows what the provisioner sees.
WATCHED_PROVIDERS = ("local", "qemu")
FINAL_STATES = ("destroyed",)
CONSOLE_MAX_LINES = 2000
_CUT_KEY = re.compile(r"\A.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S)


async def observe(settings: Settings, node: NodeInstance) -> dict[str, object]:
    """What changed about a node since it was recorded: state (booting → running → stopped/failed)
    and, for a QEMU guest, its boot time. Empty when nothing did or the node is not watched."""
    if node.provider not in WATCHED_PROVIDERS or node.state in FINAL_STATES:
        return {}
    if node.state == "failed" and node.error:  # provisioning itself failed: nothing runs
        return {}
    spec = node_spec(settings, node)
    provisioner = get_provisioner(node.provider, settings)
    state = await provisioner.status(node=spec)
    changes: dict[str, object] = {}
    details = dict(node.details or {})
    if node.provider == "qemu":
        from hub.provisioning import qemu

        development = details.get("guest") == "development"
        boot_seconds = qemu.observed_state(spec.work_dir.absolute(), development=development)[1]
        if boot_seconds is not None and details.get("boot_seconds") != boot_seconds:
            details["boot_seconds"] = boot_seconds
            changes["details"] = details
    if state != node.state:
        changes["state"] = state
        if state == "failed":
            changes["error"] = "The guest stopped before its child came up; see its console"
    return changes


def console_lines(settings: Settings, node: NodeInstance, *, lines: int) -> list[str]:
    """The last lines of the node's console (a QEMU guest's serial port, a local VM's output), with
    every secret shape removed."""
    from hub.observability.redaction import Redactor

    path = console_path(settings, node)
    if path is None or not path.is_file():
        return []
    with path.open("rb") as f:
        size = path.stat().st_size
        f.seek(max(0, size - 256 * lines))
        text = f.read().decode(errors="replace")
    # Redacted as one text, so a private key spanning lines goes whole; a key whose BEGIN line was
    # cut off by the tail goes with everything before its END line.
    text = Redactor().text(text)
    text = _CUT_KEY.sub("[REDACTED PRIVATE KEY]", text)
    return [line.rstrip("\r") for line in text.splitlines()[-lines:]]


def console_path(settings: Settings, node: NodeInstance) -> Path | None:
    """The console file inside the node's own work directory (never a path taken from elsewhere)."""
    work_dir = node_work_dir(settings, node.id)
    for name in ("serial.log", "console.log"):
        if (work_dir / name).is_file():
            return work_dir / name
    return None

"""Pick a provisioner and keep the node instance row in step with what it did."""

from __future__ import annotations

import hashlib
import logging
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

        return QemuProvisioner()
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

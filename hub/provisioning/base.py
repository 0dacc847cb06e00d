"""The provisioner interface: provision / reinject / status / destroy a node for a spawn payload."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hub.exceptions import Unprocessable
from shared_contract.payload import SpawnPayload


class ProvisionError(Unprocessable):
    """The provisioner could not do what was asked; nothing is left half-started."""

    code = "PROVISION_FAILED"


@dataclass(frozen=True)
class TemplateSpec:
    id: str
    modules: tuple[str, ...]
    vm: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeSpec:
    """What a provisioner knows about one node instance (a copy, not the ORM row)."""

    id: uuid.UUID
    name: str
    region: str | None
    work_dir: Path
    provider_ref: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvisionResult:
    state: str
    provider_ref: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Provisioner(Protocol):
    name: str

    async def provision(
        self, *, node: NodeSpec, template: TemplateSpec, payload: SpawnPayload
    ) -> ProvisionResult: ...

    async def reinject(self, *, node: NodeSpec, payload: SpawnPayload) -> ProvisionResult: ...

    async def status(self, *, node: NodeSpec) -> str: ...

    async def destroy(self, *, node: NodeSpec) -> None: ...

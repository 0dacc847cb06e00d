"""The `manual` provisioner: stage the payload files (0600) for an operator to inject; start nothing."""

from __future__ import annotations

import shutil

from hub.embedded.process import harden_data_dir
from hub.provisioning.base import NodeSpec, ProvisionResult, TemplateSpec
from shared_contract._files import write_private
from shared_contract.payload import SpawnPayload, stage_qemu_files, write_fw_cfg_tree


class ManualProvisioner:
    name = "manual"

    def __repr__(self) -> str:
        return "ManualProvisioner()"

    async def provision(
        self, *, node: NodeSpec, template: TemplateSpec, payload: SpawnPayload
    ) -> ProvisionResult:
        return await self.reinject(node=node, payload=payload)

    async def reinject(self, *, node: NodeSpec, payload: SpawnPayload) -> ProvisionResult:
        staged = stage_qemu_files(payload, node.work_dir / "fw_cfg")
        write_fw_cfg_tree(payload, node.work_dir / "by_name")
        payload_file = node.work_dir / "federation-payload.json"
        write_private(payload_file, payload.to_json().encode())  # 0600 even if it existed
        harden_data_dir(node.work_dir)  # and directories someone loosened: the token is in there
        return ProvisionResult(
            state="staged",
            provider_ref=str(node.work_dir),
            details={
                "fw_cfg_files": sorted(str(p) for p in staged.values()),
                "payload_file": str(payload_file),
            },
        )

    async def status(self, *, node: NodeSpec) -> str:
        return "staged" if (node.work_dir / "fw_cfg").exists() else "absent"

    async def destroy(self, *, node: NodeSpec) -> None:
        shutil.rmtree(node.work_dir, ignore_errors=True)

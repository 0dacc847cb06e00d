"""The manual provisioner stages the payload for an operator and starts nothing; its status says
whether the staged files are there, and destroying takes them away (twice is no error)."""

from __future__ import annotations

import uuid
from pathlib import Path

from hub.provisioning.base import NodeSpec, TemplateSpec
from hub.provisioning.manual import ManualProvisioner
from shared_contract.payload import SpawnPayload

TOKEN = "pn_tok_manual_0123456789"


async def test_staged_until_destroyed_then_absent(tmp_path: Path) -> None:
    node = NodeSpec(id=uuid.uuid4(), name="m", region=None, work_dir=tmp_path / "node")
    payload = SpawnPayload(parent_url="https://parent.example.test/", acceptance_token=TOKEN)
    provisioner = ManualProvisioner()

    before = await provisioner.status(node=node)
    result = await provisioner.provision(
        node=node, template=TemplateSpec(id="t", modules=(), vm={}), payload=payload
    )
    staged = await provisioner.status(node=node)
    held = Path(result.details["payload_file"]).read_text()
    await provisioner.destroy(node=node)
    await provisioner.destroy(node=node)

    assert (before, result.state, staged) == ("absent", "staged", "staged")
    assert TOKEN in held
    assert await provisioner.status(node=node) == "absent"
    assert not node.work_dir.exists()


def test_it_shows_as_what_it_is() -> None:
    assert repr(ManualProvisioner()) == "ManualProvisioner()"

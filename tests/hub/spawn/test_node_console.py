"""A child's node as operators see it: state from the provisioner, boot time, the console tail with
secrets redacted, a finding that points at the console, and destroy. The guest here is one that
already ran and died: its QEMU is gone and its serial console is what it printed."""

from __future__ import annotations

from sqlalchemy import select, update

from hub.federation.findings.models import Finding
from hub.provisioning import watch
from hub.provisioning.models import NodeInstance
from hub.provisioning.service import node_work_dir
from tests.hub.helpers import CHILDREN, operator_headers, spawn

TOKEN = "pnat_abcdefgh_" + "s" * 30
KEY_BODY = "\n".join(["MHcCAQEEIGuZ" + "A" * 52] * 20)  # longer than a short tail reads
CONSOLE = f"""[guest] booted in 4.43 s
[guest] starting the child
powernode-child-agent: accepting with the parent at https://10.0.2.100:8443 with {TOKEN}
PGPASSWORD=hunter2hunter2 pg_basebackup
-----BEGIN EC PRIVATE KEY-----
{KEY_BODY}
-----END EC PRIVATE KEY-----
powernode-child-agent: error: the parent refused the token
[guest] the child exited (exit 1); powering off
"""


async def dead_guest(client, runtime) -> tuple[str, dict[str, str]]:
    headers = await operator_headers(runtime)
    child_id = (await spawn(client, headers))["child"]["id"]
    detail = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"]
    node_id = detail["node_instance"]["id"]
    async with runtime.sessionmaker() as session:
        await session.execute(
            update(NodeInstance)
            .where(NodeInstance.id == node_id)
            .values(provider="qemu", state="booting", details={"guest": "development"})
        )
        await session.commit()
    work_dir = node_work_dir(runtime.settings, node_id)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "serial.log").write_text(CONSOLE.replace("\n", "\r\n"))
    return child_id, headers


async def test_the_console_shows_the_failed_guest_without_its_secrets(client, runtime):
    child_id, headers = await dead_guest(client, runtime)

    response = await client.get(f"{CHILDREN}/{child_id}/console", params={"lines": 50}, headers=headers)

    assert response.status_code == 200
    console = response.json()["data"]["console"]
    assert console["provider"] == "qemu" and console["state"] == "failed"
    assert console["boot_seconds"] == 4.43
    text = "\n".join(console["lines"])
    assert "the parent refused the token" in text and console["lines"][-1].startswith(
        "[guest] the child exited"
    )
    for secret in (TOKEN, "hunter2hunter2", "MHcCAQEEIGuZ"):
        assert secret not in text
    last = (await client.get(f"{CHILDREN}/{child_id}/console", params={"lines": 1}, headers=headers)).json()
    assert len(last["data"]["console"]["lines"]) == 1
    # A tail that starts inside the key (its BEGIN line cut off) still shows none of it.
    cut = (await client.get(f"{CHILDREN}/{child_id}/console", params={"lines": 3}, headers=headers)).json()
    assert "MHcCAQEEIGuZ" not in "\n".join(cut["data"]["console"]["lines"])
    node = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"][
        "node_instance"
    ]
    assert node["state"] == "failed" and "console" in node["error"]


async def test_bad_console_requests_are_clear_errors(client, runtime):
    child_id, headers = await dead_guest(client, runtime)
    too_many = await client.get(f"{CHILDREN}/{child_id}/console", params={"lines": 0}, headers=headers)
    unknown = await client.get(f"{CHILDREN}/00000000-0000-0000-0000-000000000000/console", headers=headers)
    assert too_many.status_code == 400 and too_many.json()["success"] is False
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"


async def test_a_guest_that_died_before_accepting_gets_a_finding_pointing_at_its_console(client, runtime):
    child_id, _ = await dead_guest(client, runtime)

    async with runtime.sessionmaker() as session, session.begin():
        swept = await watch.sweep_nodes(session, settings=runtime.settings)
        finding = await session.scalar(
            select(Finding).where(Finding.kind == watch.NOT_ACCEPTING, Finding.subject == child_id)
        )

    assert swept["nodes_not_accepting"] >= 1
    assert f"powernode-hub children console {child_id}" in finding.message
    assert finding.details["console"] == f"/api/v1/system/federation/children/{child_id}/console"
    assert finding.details["node_state"] == "failed" and finding.resolved_at is None


async def test_destroy_removes_the_node_once(client, runtime):
    child_id, headers = await dead_guest(client, runtime)
    node = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"][
        "node_instance"
    ]
    work_dir = node_work_dir(runtime.settings, node["id"])

    destroyed = await client.delete(f"{CHILDREN}/{child_id}/node", headers=headers)
    again = await client.delete(f"{CHILDREN}/{child_id}/node", headers=headers)

    assert destroyed.status_code == 200 and destroyed.json()["data"]["console"]["state"] == "destroyed"
    assert not work_dir.exists()
    assert again.status_code == 409 and again.json()["code"] == "NODE_DESTROYED"
    shown = (await client.get(f"{CHILDREN}/{child_id}", headers=headers)).json()["data"]["child"]
    assert shown["node_instance"]["state"] == "destroyed"

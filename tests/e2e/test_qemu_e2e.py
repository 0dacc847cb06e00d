"""A child in a real VM: a spawn through the operator API with the `qemu` provisioner boots a TCG
guest in which the agent reads fw_cfg from the guest kernel's sysfs, accepts through the restricted
user network's forward, and the child's hub comes up and heartbeats until the parent shows `active`.

`make test` boots one guest (managed_child). `make test-vm` (marker `vm`) boots the other modes and
the lifecycle: cluster_member streaming from inside the guest, reinject on a running and on a stopped
guest, and a parent restart that re-attaches to a running guest. Under TCG on a shared machine a
guest's first start takes minutes: every wait is on a condition, bounded generously.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub.embedded.postgres import PostgresServer
from hub.localhub import hub_command
from hub.provisioning import guest
from hub.provisioning.qemu import PIDFILE, guest_pid, stop_guest
from tests.e2e.hubs import Hub

KERNEL = guest.find_kernel()
if shutil.which("qemu-system-x86_64") is None or KERNEL is None or not guest.BUSYBOX.is_file():
    pytest.skip(
        "QEMU child test not run: qemu-system-x86_64 / linux-image / busybox-static not installed",
        allow_module_level=True,
    )
pytestmark = pytest.mark.qemu
GUEST_TIMEOUT = 1500.0  # TCG, 2 shared cores: a bound for a hang, not an expectation
# An emulated child on a busy host heartbeats every several seconds whatever its interval says: a
# stale threshold of a few seconds would flap it active ⇄ degraded.
GUEST_PARENT_ENV = {"POWERNODE_PROVISIONER": "qemu", "POWERNODE_FEDERATION_HEARTBEAT_STALE_SECONDS": "300"}


@pytest.fixture(scope="module")
def parent(harness_dir: Path) -> Iterator[Hub]:
    hub = Hub(harness_dir / "parent-qemu").start(GUEST_PARENT_ENV)
    try:
        yield hub
    finally:
        hub.stop()
        for node in hub.node_dirs():
            stop_guest(node / PIDFILE, timeout_s=10)


def cli(parent: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*hub_command(), *args, "--data-dir", str(parent.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def work_dir(child: dict[str, Any]) -> Path:
    return Path(child["node_instance"]["details"]["work_dir"])


def wait_active(parent: Hub, child_id: str) -> dict[str, Any]:
    try:
        return parent.wait_for(child_id, "active", timeout=GUEST_TIMEOUT)
    except RuntimeError as e:
        console = cli(parent, "children", "console", child_id, "--lines", "60").stdout
        stayed = str(e).splitlines()[0]
        raise AssertionError(f"{stayed}; the guest's console:\n{console}") from None


def wait_next_heartbeat(parent: Hub, child: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now = parent.child(child["id"])
        if now["last_heartbeat_at"] != child["last_heartbeat_at"]:
            return now
        time.sleep(1)
    raise AssertionError("no further heartbeat from the guest")


def assert_guest_ran_the_agent(parent: Hub, child: dict[str, Any], token: str) -> None:
    node = child["node_instance"]
    assert node["provider"] == "qemu" and node["state"] == "running"
    assert node["details"]["boot_seconds"] > 0
    assert node["details"]["guest_parent_url"].startswith(f"https://{guest.PARENT_HOST}:")
    assert token not in " ".join(node["details"]["command"])  # the token travels in a 0600 fw_cfg file
    shown = cli(parent, "children", "console", child["id"], "--lines", "400")
    assert shown.returncode == 0, shown.stderr
    console = shown.stdout
    # The agent ran without --fw-cfg-root: it read /sys/firmware/qemu_fw_cfg, the only place the token was.
    [first_run] = [line for line in console.splitlines() if line.startswith("[boot] first run")]
    assert "--fw-cfg-root" not in first_run
    assert f"accepting with the parent at https://{guest.PARENT_HOST}:" in console
    assert f"first run complete: peer {child['id']}" in console
    assert f"{node['state']}, booted in" in console.splitlines()[0]
    assert token not in console and "pnat_" not in console.replace("pnat_[REDACTED]", "")


def test_a_managed_child_in_a_guest_reaches_active_and_destroy_removes_the_guest(parent: Hub) -> None:
    spawned = parent.spawn("managed_child")
    child_id, token = spawned["child"]["id"], spawned["acceptance_token"]
    assert spawned["child"]["node_instance"]["state"] == "booting"

    child = wait_active(parent, child_id)

    assert_guest_ran_the_agent(parent, child, token)
    assert [g["direction"] for g in child["grants"]] == ["held"]
    child = wait_next_heartbeat(parent, child)
    assert child["status"] == "active"
    node = work_dir(child)
    pid = guest_pid(node / PIDFILE)
    assert pid is not None

    destroyed = cli(parent, "children", "destroy-node", child_id)

    assert destroyed.returncode == 0, destroyed.stderr
    assert parent.child(child_id)["node_instance"]["state"] == "destroyed"
    assert not Path("/proc", str(pid)).exists() or guest_pid(node / PIDFILE) is None
    assert not node.exists()


@pytest.mark.vm
async def test_a_cluster_member_in_a_guest_streams_from_the_parent_primary(parent: Hub) -> None:
    spawned = parent.spawn("cluster_member", template="powernode-hub-cluster-member")
    child = wait_active(parent, spawned["child"]["id"])

    assert_guest_ran_the_agent(parent, child, spawned["acceptance_token"])
    slot = child["metadata"]["cluster_pg"]["slot_name"]
    connection = await asyncpg.connect(PostgresServer(parent.data_dir / "postgres").url("powernode"))
    try:
        deadline = time.monotonic() + 300
        while not await connection.fetchval(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot
        ):
            assert time.monotonic() < deadline, "the guest's standby never streamed from the slot"
            time.sleep(1)
        state = await connection.fetchval(
            "SELECT r.state FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid "
            "WHERE s.slot_name = $1",
            slot,
        )
    finally:
        await connection.close()
    assert state == "streaming"


@pytest.mark.vm
def test_reinject_on_a_running_then_a_stopped_guest_and_a_parent_restart_reattaches(parent: Hub) -> None:
    spawned = parent.spawn("autonomous_peer")
    child_id = spawned["child"]["id"]
    node = Path(spawned["child"]["node_instance"]["details"]["work_dir"])
    first_pid = guest_pid(node / PIDFILE)

    rotated = cli(parent, "children", "rotate-token", child_id, "--json")  # the guest is still booting
    assert rotated.returncode == 0, rotated.stderr
    second_pid = guest_pid(node / PIDFILE)
    assert second_pid is not None and second_pid != first_pid
    stop_guest(node / PIDFILE, timeout_s=10)  # powered off before it accepted
    assert parent.child(child_id)["node_instance"]["state"] in ("stopped", "failed")
    again = cli(parent, "children", "rotate-token", child_id, "--json")
    assert again.returncode == 0, again.stderr
    token = again.stdout.split('"acceptance_token": "')[1].split('"')[0]

    child = wait_active(parent, child_id)
    assert_guest_ran_the_agent(parent, child, token)

    parent.stop()
    running = guest_pid(node / PIDFILE)
    assert running is not None  # the guest outlives the parent
    restarted = Hub(parent.data_dir, port=parent.port, federation_port=parent.federation_port)
    restarted.start(GUEST_PARENT_ENV)
    parent.process = restarted.process
    after = wait_next_heartbeat(parent, parent.child(child_id))
    assert after["status"] == "active" and after["node_instance"]["state"] == "running"
    assert guest_pid(node / PIDFILE) == running

    destroyed = cli(parent, "children", "destroy-node", child_id)  # a guest this parent did not start

    assert destroyed.returncode == 0, destroyed.stderr
    assert guest_pid(node / PIDFILE) is None and not node.exists()

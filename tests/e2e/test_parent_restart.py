"""A parent restart is invisible to its children: a graceful restart and then a kill -9 of the whole
parent (hub, PostgreSQL, Redis), each followed by a start on the same data dir."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import pid_alive
from hub.embedded.redis import RedisServer
from shared_contract.first_run import FirstRunResult
from tests.e2e.hubs import Hub, child_serve_state
from tests.harness.processes import kill_9, processes_in

TEMPLATES = {
    "managed_child": "powernode-hub",
    "autonomous_peer": "powernode-hub",
    "cluster_member": "powernode-hub-cluster-member",
}


def heartbeat_after(parent: Hub, child_id: str, moment: datetime) -> bool:
    child = parent.child(child_id)
    beat = child.get("last_heartbeat_at")
    return child["status"] == "active" and beat is not None and datetime.fromisoformat(beat) > moment


async def standby_streams(parent: Hub, node: Path) -> bool:
    result = FirstRunResult.read(node / "data" / "agent" / "first-run-result.json")
    primary = PostgresServer(parent.data_dir / "postgres")
    assert result.standby is not None
    url = primary.url("powernode").replace(f":{primary.port}/", f":{result.standby.port}/")
    try:
        connection = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        return await connection.fetchval("SELECT status FROM pg_stat_wal_receiver") == "streaming"
    finally:
        await connection.close()


async def converged(parent: Hub, children: dict[str, dict], member_pid: int, since: datetime) -> None:
    """Every child heartbeats the restarted parent and is active, the member's standby streams again
    and its hub, the same process as before, answers ready on the parent's database and Redis."""
    member = children["cluster_member"]
    node = Path(member["node_instance"]["details"]["work_dir"])
    deadline = time.monotonic() + 180
    waiting: list[str] = []
    while time.monotonic() < deadline:
        waiting = [mode for mode, c in children.items() if not heartbeat_after(parent, c["id"], since)]
        if not await standby_streams(parent, node):
            waiting.append("standby")
        try:
            ready = httpx.get(child_serve_state(node)["url"] + "/readyz", timeout=5).status_code == 200
        except (httpx.HTTPError, OSError, ValueError):
            ready = False
        if not ready:
            waiting.append("member hub")
        if not waiting:
            break
        await asyncio.sleep(0.5)
    assert not waiting, f"not back after the restart: {waiting}"
    assert pid_alive(member_pid)  # the member's hub waited for its parent instead of exiting


async def test_children_converge_after_a_graceful_restart_and_a_kill_9_of_the_whole_parent(parent: Hub):
    children = {mode: parent.spawn(mode, template)["child"] for mode, template in TEMPLATES.items()}
    children = {mode: parent.wait_for(c["id"], "active", timeout=180) for mode, c in children.items()}
    node = Path(children["cluster_member"]["node_instance"]["details"]["work_dir"])
    member_pid = int((node / "boot.pid").read_text())  # the boot process became the member's hub
    ports = (PostgresServer(parent.data_dir / "postgres").port, RedisServer(parent.data_dir / "redis").port)

    parent.stop()
    restarted_at = datetime.now().astimezone()
    parent.start()
    await converged(parent, children, member_pid, restarted_at)

    assert parent.process is not None
    kill_9(
        [
            parent.process.pid,
            *processes_in(parent.data_dir / "postgres"),
            *processes_in(parent.data_dir / "redis"),
        ]
    )
    (parent.data_dir / "serve.json").unlink()
    restarted_at = datetime.now().astimezone()
    parent.start()
    await converged(parent, children, member_pid, restarted_at)

    assert (
        PostgresServer(parent.data_dir / "postgres").port,
        RedisServer(parent.data_dir / "redis").port,
    ) == ports

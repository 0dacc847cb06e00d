"""`make demo`: a parent hub on the embedded default spawns a child in each mode and shows each
reach `active` through the operator API, then stops everything it started.

The children are real child hubs booted by the `local` provisioner: each runs the agent's first
run (accept over TLS pinned to the parent's CA, a client certificate from a CSR) and then its own
hub, which enrolls and heartbeats over mTLS. The cluster_member's first run also takes a base
backup through its replication slot and starts a streaming standby of the parent's primary; its hub
runs against the parent's primary and Redis. A row written on the parent is read back on it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from hub.embedded.postgres import PostgresServer
from hub.federation import bootstrap
from hub.localhub import LocalHub
from shared_contract.first_run import FirstRunResult

MODES = {
    "managed_child": "powernode-hub",
    "autonomous_peer": "powernode-hub",
    "cluster_member": "powernode-hub-cluster-member",
}
FAST = {
    "POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": "2",
    "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "5",
}


def _follow(parent: LocalHub, children: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    """Print each status change as it happens until every child is active."""
    seen: dict[str, str] = {}
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        details = {cid: parent.child(cid) for cid in children}
        for cid, child in details.items():
            if seen.get(cid) != child["status"]:
                seen[cid] = child["status"]
                print(
                    f"  {time.monotonic() - started:5.1f}s  {children[cid]:<16} {child['status']}", flush=True
                )
        if all(c["status"] == "active" for c in details.values()):
            return details
        time.sleep(0.25)
    raise RuntimeError(f"not every child became active within {timeout:.0f}s: {seen}")


async def _child_grants(parent: LocalHub, node_dir: Path) -> list[str]:
    """The grants the child records on its side (a cluster_member keeps them in the shared database)."""
    result = FirstRunResult.read(node_dir / "data" / "agent" / "first-run-result.json")
    own = node_dir / "data" / "postgres"
    database = PostgresServer(own if own.exists() else parent.data_dir / "postgres")
    connection = await asyncpg.connect(database.url("powernode"))
    try:
        rows = await connection.fetch(
            "SELECT direction, resource_kind FROM federation_grant WHERE revoked_at IS NULL AND peer_id = $1",
            bootstrap.parent_row_id(result),
        )
    finally:
        await connection.close()
    return [f"{r['direction']} {r['resource_kind']}" for r in rows]


async def _streaming_proof(parent: LocalHub, member: dict[str, Any]) -> str:
    """Write a row on the parent's primary and read it back on the member's standby."""
    primary = PostgresServer(parent.data_dir / "postgres")
    node = Path(member["node_instance"]["details"]["work_dir"])
    result = FirstRunResult.read(node / "data" / "agent" / "first-run-result.json")
    assert result.standby is not None
    marker = secrets.token_hex(8)
    writer = await asyncpg.connect(primary.url("powernode"))
    try:
        await writer.execute("CREATE TABLE IF NOT EXISTS demo_replication_check (marker text)")
        await writer.execute("INSERT INTO demo_replication_check VALUES ($1)", marker)
    finally:
        await writer.close()
    standby_url = primary.url("powernode").replace(f":{primary.port}/", f":{result.standby.port}/")
    reader = await asyncpg.connect(standby_url)
    try:
        receiver = await reader.fetchval("SELECT status FROM pg_stat_wal_receiver")
        for _ in range(100):  # replay is asynchronous: poll, never assume
            if await reader.fetchval("SELECT count(*) FROM demo_replication_check WHERE marker = $1", marker):
                return f"standby {receiver}: row {marker} written on the parent was read back on the member"
            await asyncio.sleep(0.1)
    finally:
        await reader.close()
    raise RuntimeError("the row written on the parent never reached the member's standby")


def _table(parent: LocalHub, details: dict[str, dict[str, Any]]) -> str:
    rows = [("MODE", "STATUS", "LAST HEARTBEAT", "GRANTS (PARENT)", "GRANTS (CHILD)")]
    for child in details.values():
        node = Path(child["node_instance"]["details"]["work_dir"])
        parent_side = ", ".join(f"{g['direction']} {g['resource_kind']}" for g in child["grants"]) or "-"
        child_side = ", ".join(asyncio.run(_child_grants(parent, node))) or "-"
        rows.append(
            (child["spawn_mode"], child["status"], child["last_heartbeat_at"] or "-", parent_side, child_side)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def run(data_dir: Path, timeout: float) -> None:
    parent = LocalHub(data_dir / "parent")
    print(f"Starting the parent hub (embedded PostgreSQL and Redis) in {parent.data_dir} ...", flush=True)
    began = time.monotonic()
    parent.start(FAST)
    try:
        print(f"Parent up at {parent.url} (federation over mTLS at {parent.federation_url})")
        children = {parent.spawn(mode, template)["child"]["id"]: mode for mode, template in MODES.items()}
        print(f"Spawned {len(children)} children with the local provisioner; following them:")
        details = _follow(parent, children, timeout)
        print()
        print(_table(parent, details))
        for child in details.values():
            if child["spawn_mode"] == "cluster_member":
                pg = child["metadata"]["cluster_pg"]
                print(f"\ncluster_member: cluster_pg.state={pg['state']} slot={pg['slot_name']}")
                print(asyncio.run(_streaming_proof(parent, child)))
        print(f"\nAll children active {time.monotonic() - began:.1f}s after start.")
    finally:
        print("Stopping the children and the parent ...", flush=True)
        parent.halt_children()
        parent.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, help="keep the demo's data here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=110, help="seconds to wait for active")
    args = parser.parse_args(argv)
    try:
        if args.data_dir:
            run(args.data_dir.absolute(), args.timeout)
        else:
            with tempfile.TemporaryDirectory(prefix="powernode-demo-") as tmp:
                run(Path(tmp), args.timeout)
    except (RuntimeError, OSError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

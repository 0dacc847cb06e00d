"""promote: an operator turns a cluster_member's standby into a primary (no auto-failover in v1).

Promotion is one-way: the standby leaves the parent's timeline for good. So the agent asks first,
and refuses while the old primary still answers (two primaries would split the cluster) unless the
operator forces it, e.g. when the old primary is fenced but still reachable.
"""

import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from child_agent import pg_replica
from child_agent.errors import AgentError
from child_agent.pg_local import run, server_user
from child_agent.state import StatePaths, read_json, read_result, write_json
from shared_contract.accept import ClusterPgBlock

log = logging.getLogger(__name__)

PRIMARY_PROBE_TIMEOUT = 3.0
PROMOTE_TIMEOUT = 120.0


def promote(paths: StatePaths, *, force: bool, confirm: Callable[[str], bool]) -> str:
    """Promote the standby recorded in the first-run result; return what was done."""
    cluster_pg, standby = _recorded_standby(paths)
    if (done := read_json(paths.promotion)) is not None:
        return f"already promoted at {done.get('promoted_at')}; nothing to do"
    old_primary = f"{cluster_pg.primary_host}:{cluster_pg.primary_port}"
    if not force and _answers(cluster_pg.primary_host, cluster_pg.primary_port):
        raise AgentError(
            f"the old primary {old_primary} still answers; promoting now would leave two primaries. "
            "Stop or fence it first, or pass --force"
        )
    question = f"Promote the standby in {standby.data_dir} (port {standby.port}) to a primary? No way back."
    if not confirm(question):
        raise AgentError("promotion cancelled; nothing changed")
    pg_replica.start(standby)
    argv: list[str | Path] = [
        standby.pg_bin / "pg_ctl",
        "promote",
        "-w",
        "-t",
        str(int(PROMOTE_TIMEOUT)),
        "-D",
        standby.data_dir,
    ]
    run(argv, owner=standby.owner, timeout=PROMOTE_TIMEOUT + 10)
    _wait_out_of_recovery(standby)
    promoted_at = datetime.now(UTC).isoformat()
    record = {
        "promoted_at": promoted_at,
        "data_dir": str(standby.data_dir),
        "port": standby.port,
        "previous_primary": old_primary,
        "forced": force,
    }
    write_json(paths.promotion, record)
    return (
        f"promoted the standby in {standby.data_dir} to a primary on port {standby.port}; recorded in "
        f"{paths.promotion}. Slot {cluster_pg.slot_name} on the old primary is no longer used."
    )


def _recorded_standby(paths: StatePaths) -> tuple[ClusterPgBlock, pg_replica.Standby]:
    result = read_result(paths.result)
    if result is None:
        raise AgentError(f"no first-run result at {paths.result}: promote needs a cluster_member's first run")
    if result.spawn_mode != "cluster_member" or result.standby is None or result.cluster_pg is None:
        raise AgentError(f"this child is a {result.spawn_mode}, not a cluster_member with a standby")
    standby = pg_replica.Standby(
        Path(result.standby.data_dir),
        port=result.standby.port,
        pg_bin=Path(result.standby.pg_bin),
        owner=server_user(),
        login_role=result.cluster_pg.username,
    )
    return result.cluster_pg, standby


def _answers(host: str, port: int) -> bool:
    """Whether anything accepts a TCP connection at host:port (what pg_isready would first try)."""
    try:
        with socket.create_connection((host, port), timeout=PRIMARY_PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def _wait_out_of_recovery(standby: pg_replica.Standby) -> None:
    deadline = time.monotonic() + PROMOTE_TIMEOUT
    while standby.query("SELECT pg_is_in_recovery()") != "f":
        if time.monotonic() >= deadline:
            raise AgentError(f"{standby.data_dir} is still in recovery after {PROMOTE_TIMEOUT:.0f}s")
        time.sleep(0.2)
    log.info("the server on port %d is out of recovery and accepts writes", standby.port)

"""replica: a cluster_member's accept → streaming standby, next to plain pg_basebackup, same data.

The parent hub's primary holds ~100 MB (a table filled with generate_series). Each round runs
both, which one goes first alternating:
  plain  `pg_basebackup -R -X stream -c fast` as the superuser, the standby's port and socket dir
         appended to postgresql.auto.conf, `pg_ctl start -w`, then pg_stat_wal_receiver polled
         every 0.1 s until `streaming`
  real   a cluster_member spawned through the operator API; its replica setup job (slot, role,
         secret in the local encrypted store) finished before the clock starts, as it does long
         before a VM boots. Timed: `child_agent.first_run.first_run()` on the staged fw_cfg tree:
         accept with a CSR (the credential delivered in the answer), then pg_replica's base backup
         through the slot, standby configured and started, streaming verified. Everything runs
         in this process or as the tools it starts; no child hub is started.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import ROOT, Result, hub_database_url, median, running_hub, workdir
from bench.machine import cpu_window
from child_agent import first_run as first_run_module
from child_agent import pg_replica
from child_agent.first_run import FirstRunOptions, first_run
from hub.embedded.pgconf import socket_dir_for
from hub.embedded.postgres import PostgresServer, pg_bin_dir
from hub.embedded.privileges import ensure_traversable, owned_file, private_dir, server_user
from hub.embedded.process import EmbeddedError, free_port, wait_until
from hub.embedded.process import run as run_tool
from hub.localhub import LocalHub

ROUNDS = 6  # even: each path goes first equally often
TARGET_MB = 100
TARGET_RATIO = 1.3
TEMPLATE = "powernode-hub-cluster-member"
_BALLAST = """
CREATE TABLE bench_ballast AS
SELECT g AS id, md5(g::text) || repeat('x', 64) AS filler FROM generate_series(1, $1::int) AS g
"""
ROWS_PER_MB = 7_000


async def load_ballast(database_url: str) -> float:
    """~TARGET_MB of table data, vacuumed and checkpointed; the database size in MB."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DROP TABLE IF EXISTS bench_ballast")
        await connection.execute(_BALLAST, TARGET_MB * ROWS_PER_MB)
        await connection.execute("VACUUM (FREEZE, ANALYZE) bench_ballast")
        await connection.execute("CHECKPOINT")
        size = await connection.fetchval("SELECT sum(pg_database_size(datname)) FROM pg_database")
    finally:
        await connection.close()
    return float(size) / 1e6


def _pg(name: str, *args: str, password: str | None = None, timeout: float = 600) -> str:
    env = {"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"} if password else None
    return run_tool([pg_bin_dir() / name, *args], as_user=server_user(), env=env, timeout=timeout)


def _prepare(data_dir: Path) -> None:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    ensure_traversable(data_dir)
    private_dir(data_dir, server_user())


def _stop(data_dir: Path) -> None:
    if (data_dir / "postmaster.pid").exists():
        _pg("pg_ctl", "stop", f"--pgdata={data_dir}", "--mode=immediate", "--wait")


Phases = dict[str, float]


@contextmanager
def timing(phases: Phases, module: Any, *names: str) -> Iterator[None]:
    """Time calls to module-level functions (the product calls them through its module globals)."""
    originals: dict[str, Callable[..., Any]] = {name: getattr(module, name) for name in names}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - began

        return call

    for name, function in originals.items():
        setattr(module, name, timed(name, function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


def plain(primary: PostgresServer, data_dir: Path, phases: Phases) -> float:
    """Seconds for pg_basebackup + standby start + streaming, the recipe of DESIGN §10 without a slot."""
    _prepare(data_dir)
    port, socket_dir = free_port(), socket_dir_for(data_dir)
    private_dir(socket_dir, server_user())
    began = time.perf_counter()
    _pg(
        "pg_basebackup",
        f"--pgdata={data_dir}",
        "--host=127.0.0.1",
        f"--port={primary.port}",
        f"--username={primary.superuser}",
        "--no-password",
        "--write-recovery-conf",
        "--wal-method=stream",
        "--checkpoint=fast",
        password=primary.password,
    )
    phases["base_backup"] = time.perf_counter() - began
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"port = {port}\nunix_socket_directories = '{socket_dir}'\n")
    log = owned_file(data_dir.parent / "standby.log", server_user())
    _pg("pg_ctl", "start", f"--pgdata={data_dir}", f"--log={log}", "--wait")
    phases["start"] = time.perf_counter() - began - phases["base_backup"]

    def streaming() -> bool:
        try:
            status = _pg(
                "psql",
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--username={primary.superuser}",
                "--dbname=postgres",
                "--command=SELECT status FROM pg_stat_wal_receiver",
                password=primary.password,
                timeout=30,
            )
        except EmbeddedError:
            return False
        return status.strip() == "streaming"

    if not wait_until(streaming, 120, interval=0.1):
        raise RuntimeError(f"the plain standby in {data_dir} did not stream")
    total = time.perf_counter() - began
    phases["wait_streaming"] = total - phases["base_backup"] - phases["start"]
    return total


def _ready_member(parent: LocalHub) -> tuple[str, Path]:
    """A cluster_member whose replica setup job has finished; its id and staged fw_cfg tree."""
    data = parent.spawn("cluster_member", TEMPLATE)
    child_id = data["child"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        child = parent.api("GET", f"{ROOT}/federation/children/{child_id}").json()["data"]["child"]
        state = (child.get("metadata") or {}).get("cluster_pg", {}).get("state")
        if state == "ready":
            details = child["node_instance"]["details"]
            return child_id, Path(details["payload_file"]).parent / "by_name"
        if state == "error":
            raise RuntimeError(f"replica setup failed: {child['metadata']['cluster_pg']}")
        time.sleep(0.1)
    raise RuntimeError(f"the replica setup of {child_id} did not finish within 60s")


def real(parent: LocalHub, base: Path, phases: Phases) -> float:
    """Seconds for the agent's first run of a cluster_member: accept → standby streaming."""
    _, fw_cfg = _ready_member(parent)
    standby = base / "standby" / "pgdata"
    options = FirstRunOptions(
        fw_cfg_root=fw_cfg,
        state_dir=base / "agent",
        standby_dir=standby,
        standby_port=free_port(),
        max_wait=60,
    )
    with (
        timing(phases, first_run_module, "_accept"),
        timing(phases, pg_replica, "base_backup", "start", "wait_streaming"),
    ):
        began = time.perf_counter()
        first_run(options)
        return time.perf_counter() - began


Timings = list[tuple[float, Phases]]


def run_rounds(parent: LocalHub, base: Path) -> tuple[Timings, Timings]:
    """ROUNDS pairs; which path goes first alternates, so neither always follows the other's I/O."""
    primary = PostgresServer(parent.data_dir / "postgres")
    plains: Timings = []
    reals: Timings = []
    for i in range(ROUNDS):
        pair = [
            (base / f"round{i}" / "plain" / "pgdata", lambda d, p: plain(primary, d, p), plains),
            (
                base / f"round{i}" / "real" / "standby" / "pgdata",
                lambda d, p: real(parent, d.parent.parent, p),
                reals,
            ),
        ]
        for path, timed, into in pair if i % 2 == 0 else reversed(pair):
            phases: Phases = {}
            try:
                into.append((timed(path, phases), phases))
            finally:
                _stop(path)
        shutil.rmtree(base / f"round{i}")  # two copies of ~125 MB
    return plains, reals


def _describe(label: str, timings: Timings) -> str:
    """Median total and the median of each phase ('other': what no phase covers)."""
    totals = [t for t, _ in timings]
    rows = [{**p, "other": t - sum(p.values())} for t, p in timings]
    parts = ", ".join(f"{n} {median([r.get(n, 0.0) for r in rows]):.2f}" for n in rows[0])
    return f"{label:<32} median {median(totals):.2f}s ({parts}); rounds " + ", ".join(
        f"{t:.2f}" for t in totals
    )


def run() -> Result:
    result = Result("replica")
    base = workdir("replica")
    with running_hub(base / "parent", {"POWERNODE_PROVISIONER": "manual"}) as parent:
        size_mb = asyncio.run(load_ballast(hub_database_url(parent)))
        result.say(
            f"primary: {size_mb:.0f} MB in its databases (the parent hub's embedded PostgreSQL, fsync on)"
        )
        with cpu_window() as cpu:
            plains, reals = run_rounds(parent, base)
        result.say(str(cpu))
    result.say(_describe("plain pg_basebackup + start", plains))
    result.say(_describe("cluster_member accept→streaming", reals))
    paired = median([r / p for (r, _), (p, _) in zip(reals, plains, strict=True)])
    of_medians = median([t for t, _ in reals]) / median([t for t, _ in plains])
    of_minimums = min(t for t, _ in reals) / min(t for t, _ in plains)
    result.say(
        f"{ROUNDS} rounds of a plain and a real run (order alternating); ratio: median of the rounds' ratios "
        f"{paired:.2f} (of medians {of_medians:.2f}, of best runs {of_minimums:.2f})"
    )
    result.ratio("accept→streaming / plain basebackup", median([t for t, _ in reals]),
                 median([t for t, _ in plains]), TARGET_RATIO, at_least=False, unit="s",
                 baseline_name="plain pg_basebackup + start", value=paired)  # fmt: skip
    return result

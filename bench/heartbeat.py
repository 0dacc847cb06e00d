"""heartbeat: enrolled children heartbeating through the trusted-proxy path, driven by wrk.

The hub trusts 127.0.0.1 as its TLS-terminating proxy, so wrk can present each child by the
`X-Client-S-DN-CN: fed:<peer_id>` header, rotating over N peers inserted directly into the hub's
database (status `enrolled`, spawn_role `parent`: the first beat of each makes it `active`).
In the same run, on the same database, the baseline: a bare FastAPI endpoint doing one
`UPDATE … WHERE id = $1` per request (bench/naive_heartbeat.py), driven the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx

from bench.common import (
    Result,
    hub_database_url,
    running_hub,
    start_baseline,
    stop_process,
    wait_for_answer,
    workdir,
)
from bench.machine import cpu_window
from bench.naive_heartbeat import PATH as NAIVE_PATH
from bench.wrk import WrkRun, rotating_header_script, run_wrk
from hub.federation.peering.heartbeats import _BATCH_UPDATE as BATCH_UPDATE
from hub.federation.peering.router import HEARTBEAT_PATH

PEERS = int(os.environ.get("BENCH_HEARTBEAT_PEERS", "100000"))
THREADS, CONNECTIONS, SECONDS, WARMUP_SECONDS = 2, 64, 10, 2
ROUNDS = 2
CN_HEADER = "X-Client-S-DN-CN"
BODY = json.dumps({"platform_version": "0.1.0"})
TARGET_NAIVE_RATIO, TARGET_CEILING_RATIO, TARGET_P99_RATIO = 3.0, 0.6, 1.0
CEILING_BATCH = CONNECTIONS // 2  # the batch the hub forms: 64 clients over 2 commits in flight
CEILING_CONNECTIONS = 2  # the hub's heartbeat connections
HUB_ENV = {
    "POWERNODE_FEDERATION_TRUSTED_PROXIES": '["127.0.0.1/32"]',
    "POWERNODE_FEDERATION_CLIENT_CERT_HEADER": CN_HEADER,  # the one header the hub reads from its proxy
    "POWERNODE_PROVISIONER": "manual",
}

_INSERT = """
INSERT INTO federation_peer (id, name, peer_kind, spawn_role, spawn_mode, status, contract_version,
                             accepted_at, enrolled_at)
SELECT gen_random_uuid(), 'bench-heartbeat-' || g, 'platform', 'parent', 'managed_child', 'enrolled', 1,
       now(), now()
FROM generate_series(1, $1) AS g
RETURNING id
"""


async def insert_peers(database_url: str, count: int) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(_INSERT, count)
        await connection.execute("ANALYZE federation_peer")
    finally:
        await connection.close()
    return [str(row["id"]) for row in rows]


async def beaten_since(database_url: str, ids: list[str], since: datetime) -> tuple[int, int]:
    """(peers whose heartbeat was recorded after `since`, of which now `active`)."""
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS beaten, count(*) FILTER (WHERE status = 'active') AS active "
            "FROM federation_peer WHERE id = ANY($1::uuid[]) AND last_heartbeat_at > $2",
            ids,
            since,
        )
    finally:
        await connection.close()
    return int(row["beaten"]), int(row["active"])


async def database_now(database_url: str) -> datetime:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT now()")
    finally:
        await connection.close()


async def db_ceiling(database_url: str, ids: list[str], seconds: float) -> float:
    """Rows/s of the hub's own batched heartbeat UPDATE driven straight from asyncpg (no HTTP), on
    as many connections as the hub uses, in batches of the size the hub forms under this load."""
    peers = [uuid.UUID(i) for i in ids]
    fps: list[str | None] = [None] * CEILING_BATCH
    # What the hub binds for BODY: only platform_version is reported, every other field is absent.
    absent: list[str | None] = [None] * CEILING_BATCH
    version = [json.loads(BODY)["platform_version"]] * CEILING_BATCH
    connections = [await asyncpg.connect(database_url) for _ in range(CEILING_CONNECTIONS)]
    done = 0

    async def drive(connection: asyncpg.Connection, start: int, until: float, counted: bool) -> None:
        nonlocal done
        i = start
        while time.monotonic() < until:
            batch = [peers[(i + k) % len(peers)] for k in range(CEILING_BATCH)]
            rows = await connection.fetch(
                BATCH_UPDATE, batch, fps, absent, absent, absent, absent, version, absent
            )
            i += CEILING_BATCH * CEILING_CONNECTIONS
            if counted:
                done += len(rows)

    try:
        warm = time.monotonic() + WARMUP_SECONDS
        await asyncio.gather(*(drive(c, n * CEILING_BATCH, warm, False) for n, c in enumerate(connections)))
        began = time.monotonic()
        until = began + seconds
        await asyncio.gather(*(drive(c, n * CEILING_BATCH, until, True) for n, c in enumerate(connections)))
        return done / (time.monotonic() - began)
    finally:
        for connection in connections:
            await connection.close()


def uses_uvloop(pid: int) -> bool:
    """Whether a running process has uvloop's extension loaded (so its event loop is uvloop's)."""
    try:
        return "uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def measure(result: Result, label: str, url: str, script: Path, server_pid: int) -> WrkRun:
    run_wrk(url, script, threads=THREADS, connections=CONNECTIONS, seconds=WARMUP_SECONDS)
    with cpu_window(watch=server_pid) as cpu:
        run = run_wrk(url, script, threads=THREADS, connections=CONNECTIONS, seconds=SECONDS)
    if run.errors:
        raise RuntimeError(f"{label}: {run.errors} failed requests\n{run.output}")
    result.say(
        f"{label:<28} {run.rate:8,.0f}/s  p50 {run.p50:6.2f} ms  p99 {run.p99:6.2f} ms  "
        f"server CPU {cpu.watched * 1e6 / run.requests:4.0f} µs/request  ({run.requests:,} requests)"
    )
    result.say(f"{'':<28} {cpu}")
    return run


def start_naive(base: Path, database_url: str, *, uvloop: bool) -> tuple[subprocess.Popen[bytes], str]:
    return start_baseline(
        "bench.naive_heartbeat", ["--database-url", database_url], base / "naive.log", uvloop=uvloop
    )


def run() -> Result:
    result = Result("heartbeat")
    base = workdir("heartbeat")
    with running_hub(base / "parent", HUB_ENV) as hub:
        database_url = hub_database_url(hub)
        ids = asyncio.run(insert_peers(database_url, PEERS))
        script = rotating_header_script(
            base / "heartbeat.lua",
            header=CN_HEADER,
            values=[f"fed:{i}" for i in ids],
            body=BODY,
            threads=THREADS,
        )
        probe = httpx.post(hub.url + HEARTBEAT_PATH, headers={CN_HEADER: f"fed:{ids[0]}"}, content=BODY)
        if probe.status_code != 200 or probe.json()["data"]["status"] != "active":
            raise RuntimeError(f"the hub refused a heartbeat: {probe.status_code} {probe.text[:300]}")
        hub_pid = hub.process.pid if hub.process else 0
        uvloop = uses_uvloop(hub_pid)
        result.say(
            f"{PEERS} enrolled peers; wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s --latency (after a "
            f"{WARMUP_SECONDS}s warm-up each), POST with {CN_HEADER} rotating over the peers; "
            f"event loop: {'uvloop' if uvloop else 'asyncio'} for both servers"
        )
        since = asyncio.run(database_now(database_url))
        naive, naive_url = start_naive(base, database_url, uvloop=uvloop)
        hub_runs, naive_runs = [], []
        try:
            wait_for_answer(
                naive,
                lambda: (
                    httpx.post(naive_url + NAIVE_PATH, headers={CN_HEADER: f"fed:{ids[0]}"}).status_code
                    == 200
                ),
            )
            for round_ in range(ROUNDS):
                hub_runs.append(measure(result, "hub", hub.url + HEARTBEAT_PATH, script, hub_pid))
                if round_ == 0:
                    beaten, active = asyncio.run(beaten_since(database_url, ids, since))
                    result.say(
                        f"{'':<28} durable: {beaten}/{PEERS} peers got a new timestamp, {active} active"
                    )
                naive_runs.append(
                    measure(result, "naive FastAPI, 1 UPDATE/req", naive_url + NAIVE_PATH, script, naive.pid)
                )
        finally:
            stop_process(naive)
        ceiling = asyncio.run(db_ceiling(database_url, ids, SECONDS))
        result.say(
            f"{'database alone':<28} {ceiling:8,.0f} rows/s  (the same batched UPDATE from asyncpg, "
            f"{CEILING_CONNECTIONS} connections, batches of {CEILING_BATCH}, no HTTP)"
        )
    hub_run = max(hub_runs, key=lambda r: r.rate)
    naive_run = max(naive_runs, key=lambda r: r.rate)
    result.say(f"best of {ROUNDS} alternating runs each (the machine is shared; both get the same treatment)")
    result.ratio("heartbeats/s: hub / naive endpoint", hub_run.rate, naive_run.rate, TARGET_NAIVE_RATIO,
                 at_least=True, unit="/s", baseline_name="naive")  # fmt: skip
    result.ratio("heartbeats/s: hub / database ceiling", hub_run.rate, ceiling, TARGET_CEILING_RATIO,
                 at_least=True, unit="/s", baseline_name="database alone")  # fmt: skip
    result.ratio("heartbeat p99: hub / naive endpoint", hub_run.p99, naive_run.p99, TARGET_P99_RATIO,
                 at_least=False, unit="ms", baseline_name="naive")  # fmt: skip
    return result

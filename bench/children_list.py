"""children_list: the first page of `GET …/children` with 100,000 children, through a real hub.

The peers (and one acceptance token each) go straight into the database of a `powernode-hub
serve` (migrated by it with hub.migrate.upgrade) with generate_series: statuses and modes mixed as
in a long-lived fleet, creation times spread over a year. Then sequential requests with keep-alive
from one client, each timed end to end; the operator token is checked on every request, as always.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import httpx

from bench.common import (
    ROOT,
    Result,
    Stopwatch,
    hub_database_url,
    median,
    percentile,
    running_hub,
    start_baseline,
    stop_process,
    wait_for_answer,
    workdir,
)
from bench.floor_children import PATH as FLOOR_PATH
from bench.heartbeat import uses_uvloop
from bench.machine import cpu_window

PEERS = 100_000
REQUESTS = 300
WARMUP = 30
TARGET_FLOOR_RATIO = 2.0  # the hub's first page p99 / the floor's p99
QUERIES = {
    "first page": {"limit": "50"},
    "status=active": {"limit": "50", "status": "active"},
    "status=degraded,suspended": {"limit": "50", "status": "degraded,suspended"},
}
# Of every 100 children: 70 active, 8 proposed, 5 revoked, 4 degraded, 4 enrolled, 4 accepted,
# 3 suspended, 2 more active; modes mixed 6:3:1.
_INSERT = """
WITH shape AS (
  SELECT g,
         (ARRAY['active','active','active','active','active','active','active','active','active','active',
                'active','active','active','active','active','active','active','active','active','active',
                'active','active','active','active','active','active','active','active','active','active',
                'active','active','active','active','active','active','active','active','active','active',
                'active','active','active','active','active','active','active','active','active','active',
                'active','active','active','active','active','active','active','active','active','active',
                'active','active','active','active','active','active','active','active','active','active',
                'active','active',
                'proposed','proposed','proposed','proposed','proposed','proposed','proposed','proposed',
                'revoked','revoked','revoked','revoked','revoked',
                'degraded','degraded','degraded','degraded',
                'enrolled','enrolled','enrolled','enrolled',
                'accepted','accepted','accepted','accepted',
                'suspended','suspended','suspended'])[1 + (g * 37) % 100] AS status,
         (ARRAY['managed_child','managed_child','managed_child','managed_child','managed_child',
                'managed_child','autonomous_peer','autonomous_peer','autonomous_peer',
                'cluster_member'])[1 + (g * 7) % 10] AS mode,
         now() - make_interval(secs => (g::float8 / $1) * 365 * 86400) AS created
  FROM generate_series(1, $1::int) AS g
), peers AS (
  INSERT INTO federation_peer (id, name, peer_kind, spawn_role, spawn_mode, status, template_id,
                               created_at, updated_at, last_heartbeat_at, contract_version)
  SELECT gen_random_uuid(), 'bench-child-' || g, 'platform', 'parent', mode, status, 'powernode-hub',
         created, created, CASE WHEN status IN ('active', 'degraded') THEN now() END, 1
  FROM shape
  RETURNING id, status, created_at
)
INSERT INTO acceptance_token (id, public_id, peer_id, secret_hash, expires_at, created_at, consumed_at)
SELECT gen_random_uuid(), substr(md5(id::text), 1, 12), id, md5(id::text || 'secret'),
       created_at + interval '7 days', created_at,
       CASE WHEN status <> 'proposed' THEN created_at + interval '1 minute' END
FROM peers
"""


async def load(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(_INSERT, PEERS)
        await connection.execute("VACUUM ANALYZE federation_peer")
        await connection.execute("VACUUM ANALYZE acceptance_token")
        return int(
            await connection.fetchval("SELECT count(*) FROM federation_peer WHERE spawn_role = 'parent'")
        )
    finally:
        await connection.close()


_PAGE_SQL = """
EXPLAIN (ANALYZE, FORMAT JSON)
SELECT * FROM federation_peer
WHERE spawn_role = 'parent' AND (cardinality($1::text[]) = 0 OR status = ANY($1::text[]))
ORDER BY created_at DESC, id DESC LIMIT 51
"""


async def page_plan(database_url: str, statuses: list[str]) -> str:
    """How the database answers the page query alone: its plan's first node and execution time."""
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(3):
            plan = json.loads(await connection.fetchval(_PAGE_SQL, statuses))[0]
    finally:
        await connection.close()
    node = plan["Plan"]
    while node.get("Plans") and node["Node Type"] == "Limit":
        node = node["Plans"][0]
    index = f" on {node['Index Name']}" if "Index Name" in node else ""
    return f"{node['Node Type']}{index}, {plan['Execution Time']:.2f} ms"


def timed_requests(
    client: httpx.Client, params: dict[str, str], path: str = f"{ROOT}/federation/children"
) -> list[float]:
    for _ in range(WARMUP):
        client.get(path, params=params).raise_for_status()
    latencies = []
    for _ in range(REQUESTS):
        began = time.perf_counter()
        response = client.get(path, params=params)
        latencies.append(time.perf_counter() - began)
        if response.status_code != 200 or len(response.json()["data"]["children"]) != int(params["limit"]):
            raise RuntimeError(f"children list failed: {response.status_code} {response.text[:300]}")
    return latencies


def floor_p99(base: Path, page: dict, uvloop: bool) -> list[float]:
    """Latencies of the floor endpoint serving `page` (what the hub answered) from memory."""
    page_file = base / "page.json"
    page_file.write_text(json.dumps(page))
    args = ["--page", str(page_file)]
    floor, url = start_baseline("bench.floor_children", args, base / "floor.log", uvloop=uvloop)
    try:
        wait_for_answer(floor, lambda: httpx.get(url + FLOOR_PATH).status_code == 200)
        with httpx.Client(base_url=url, timeout=30) as client:
            return [t * 1000 for t in timed_requests(client, QUERIES["first page"], FLOOR_PATH)]
    finally:
        stop_process(floor)


def run() -> Result:
    result = Result("children_list")
    base = workdir("children_list")
    with running_hub(base / "parent", {"POWERNODE_PROVISIONER": "manual"}) as hub:
        clock = Stopwatch()
        database_url = hub_database_url(hub)
        count = asyncio.run(load(database_url))
        result.say(f"{count:,} children (+1 acceptance token each) inserted and analysed in {clock():.1f}s")
        result.say(f"{REQUESTS} sequential requests per query after {WARMUP} warm-up, one keep-alive client")
        p99s = {}
        with httpx.Client(base_url=hub.url, headers=hub.headers, timeout=30) as client:
            for label, params in QUERIES.items():
                with cpu_window() as cpu:
                    latencies = [t * 1000 for t in timed_requests(client, params)]
                p99s[label] = percentile(latencies, 99)
                statuses = [s for s in params.get("status", "").split(",") if s]
                plan = asyncio.run(page_plan(database_url, statuses))
                result.say(
                    f"{label:<28} p50 {median(latencies):5.1f} ms  p99 {p99s[label]:5.1f} ms  "
                    f"max {max(latencies):5.1f} ms  (the query alone: {plan})"
                )
                result.say(f"{'':<28} {cpu}")
            page = client.get(f"{ROOT}/federation/children", params=QUERIES["first page"]).json()
        uvloop = uses_uvloop(hub.process.pid if hub.process else 0)
        floor = floor_p99(base, page, uvloop)
        result.say(
            f"{'floor (same page, memory)':<28} p50 {median(floor):5.1f} ms  "
            f"p99 {percentile(floor, 99):5.1f} ms  "
            "(bare FastAPI on uvicorn serialising the hub's page; no auth, no query)"
        )
    result.ratio("first page p99: hub / HTTP+JSON floor", p99s["first page"], percentile(floor, 99),
                 TARGET_FLOOR_RATIO, at_least=False, unit="ms", baseline_name="floor")  # fmt: skip
    return result

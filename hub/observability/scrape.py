"""`/metrics`: this process's counters, plus what the database says, read at scrape time.

Peers, heartbeat lag, open findings and replication slots are facts of the database, so any API
process reports them alike; nothing is cached between scrapes. The queries are aggregates over
indexed columns and run under `statement_timeout` (and the whole read under a deadline), each in
its own savepoint: one that fails or times out is counted in `powernode_scrape_errors_total` and
the scrape still answers with everything else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.federation.peering.heartbeats import HEARTBEAT_STATUSES
from hub.federation.peers.models import PEER_STATUSES, SPAWN_MODES, SPAWN_ROLES
from hub.observability import metrics
from hub.replication import primary
from hub.runtime import HubRuntime

log = logging.getLogger(__name__)
LAG_BUCKETS = (10.0, 30.0, 60.0, 90.0, 300.0, 900.0, 3600.0)

_PEERS = text("SELECT status, spawn_mode, spawn_role, count(*) FROM federation_peer GROUP BY 1, 2, 3")
_BUCKET_COUNTS = ", ".join(f"count(*) FILTER (WHERE lag <= {le})" for le in LAG_BUCKETS)
_LAG = text(
    f"SELECT status, count(*), sum(lag), max(lag), {_BUCKET_COUNTS}"  # noqa: S608 - constants only
    " FROM (SELECT status, greatest(0, extract(epoch FROM now() - last_heartbeat_at))::float8 AS lag"
    "       FROM federation_peer WHERE last_heartbeat_at IS NOT NULL AND status = ANY(:statuses)) AS p"
    " GROUP BY status"
)
_FINDINGS = text("SELECT kind, count(*) FROM finding WHERE resolved_at IS NULL GROUP BY kind")


async def _peers(session: AsyncSession) -> list[Metric]:
    family = GaugeMetricFamily(
        "powernode_peers",
        "Federation peers by status, spawn mode and spawn role.",
        labels=["status", "mode", "role"],
    )
    counts = {tuple(row[:3]): row[3] for row in await session.execute(_PEERS)}
    # Every known combination, zeros included: a series that vanishes at zero breaks alerts.
    for key in {*itertools.product(PEER_STATUSES, SPAWN_MODES, SPAWN_ROLES), *counts}:
        family.add_metric(list(key), counts.get(key, 0))
    return [family]


async def _heartbeat_lag(session: AsyncSession) -> list[Metric]:
    lag = GaugeHistogramMetricFamily(
        "powernode_peer_heartbeat_lag_seconds",
        "Seconds since the last heartbeat of peers that should be heartbeating, by status.",
        labels=["status"],
    )
    worst = GaugeMetricFamily(
        "powernode_peer_heartbeat_lag_max_seconds", "The longest heartbeat lag, by status.", labels=["status"]
    )
    rows = await session.execute(_LAG, {"statuses": list(HEARTBEAT_STATUSES)})
    for status, count, total, longest, *cumulative in rows:
        buckets = [(str(le), n) for le, n in zip(LAG_BUCKETS, cumulative, strict=True)]
        lag.add_metric([status], [*buckets, ("+Inf", count)], gsum_value=total)
        worst.add_metric([status], longest)
    return [lag, worst]


async def _findings(session: AsyncSession) -> list[Metric]:
    family = GaugeMetricFamily("powernode_findings_open", "Open findings by kind.", labels=["kind"])
    for kind, count in await session.execute(_FINDINGS):
        family.add_metric([kind], count)
    return [family]


async def _slots(session: AsyncSession) -> list[Metric]:
    retained = GaugeMetricFamily(
        "powernode_replication_slot_retained_bytes",
        "WAL each cluster_member slot of ours holds back on the primary.",
        labels=["slot"],
    )
    active = GaugeMetricFamily(
        "powernode_replication_slot_active", "1 while a member streams from the slot.", labels=["slot"]
    )
    for slot in await primary.our_slots(session) or []:
        retained.add_metric([slot.name], slot.retained_bytes or 0)
        active.add_metric([slot.name], 1 if slot.active else 0)
    return [retained, active]


QUERIES: dict[str, Callable[[AsyncSession], Awaitable[list[Metric]]]] = {
    "peers": _peers,
    "heartbeat_lag": _heartbeat_lag,
    "findings": _findings,
    "replication_slots": _slots,
}
for _query in (*QUERIES, "connection"):
    metrics.SCRAPE_ERRORS.labels(query=_query)


async def _read(session: AsyncSession, limit: float, families: list[Metric], running: list[str]) -> None:
    await session.execute(
        text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(limit * 1000))}
    )
    for name, query in QUERIES.items():
        running[:] = [name]
        try:
            async with session.begin_nested():
                families.extend(await query(session))
        except SQLAlchemyError as e:
            metrics.scrape_failed(name)
            log.warning("metrics: the %s query failed: %s", name, type(e).__name__)
    running[:] = []


async def database_families(runtime: HubRuntime) -> list[Metric]:
    """The database-derived gauges; a failure costs the affected gauges, never the scrape."""
    timeout = runtime.settings.metrics_query_timeout_seconds
    families: list[Metric] = []
    running: list[str] = []
    started = time.perf_counter()
    try:
        # statement_timeout bounds each query; this bounds waiting for a connection, too.
        async with asyncio.timeout(timeout * 2 + 1):
            async with runtime.sessionmaker() as session, session.begin():
                await _read(session, timeout, families, running)
    except (OSError, SQLAlchemyError, TimeoutError) as e:
        metrics.scrape_failed(running[0] if running else "connection")
        log.warning("metrics: the database could not be read: %s", type(e).__name__)
    duration = GaugeMetricFamily(
        "powernode_scrape_duration_seconds", "How long this scrape's database queries took."
    )
    duration.add_metric([], time.perf_counter() - started)
    return [*families, duration]


class _Families:
    """A collector over metrics already gathered (prometheus-client collects synchronously)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


async def render(runtime: HubRuntime) -> bytes:
    """The text exposition: the database part is read first, so its failures show in this scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(await database_families(runtime)))
    return generate_latest(REGISTRY) + generate_latest(registry)

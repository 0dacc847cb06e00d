"""Heartbeat ingestion with group commit.

Each heartbeat still waits for its own durable result (the peer's status, possibly just moved
enrolled/degraded → active), but heartbeats that arrive while a commit is in flight share the
next one: one `UPDATE … FROM unnest(…)` statement, autocommitted, for the whole batch instead of
one transaction per request (DESIGN §8). At most `connections` statements run at once, on
connections of its own (no pool reset round trips); when none is in flight a heartbeat goes at
once, so a quiet hub adds no latency.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import asyncpg

from hub.hotpath import asyncpg_dsn, discard

log = logging.getLogger(__name__)
HEARTBEAT_STATUSES = ("enrolled", "active", "degraded")

# What a heartbeat body carries rides in the same statement: NULL leaves the stored value alone,
# capabilities, endpoints and extension_slugs replace it, and an object sync_cursor is merged into
# the stored one per table. Two heartbeats of one peer in a batch: the later one wins.
_BATCH_UPDATE = """
    UPDATE federation_peer AS p SET
        last_heartbeat_at = now(),
        updated_at = CASE WHEN p.status = 'active' THEN p.updated_at ELSE now() END,
        activated_at = CASE WHEN p.status = 'enrolled' THEN now() ELSE p.activated_at END,
        status = CASE WHEN p.status IN ('enrolled', 'degraded') THEN 'active' ELSE p.status END,
        capabilities = coalesce(b.caps::jsonb, p.capabilities),
        endpoints = coalesce(b.eps::jsonb, p.endpoints),
        sync_cursor = CASE
            WHEN b.cur IS NULL THEN p.sync_cursor
            WHEN jsonb_typeof(b.cur::jsonb) = 'object' AND jsonb_typeof(p.sync_cursor) = 'object'
                THEN p.sync_cursor || b.cur::jsonb
            ELSE b.cur::jsonb END,
        extension_slugs = coalesce(b.slugs::jsonb, p.extension_slugs),
        platform_version = coalesce(b.pv, p.platform_version),
        data_residency = coalesce(b.dr, p.data_residency)
    FROM (
        SELECT DISTINCT ON (id) id, fp, caps, eps, cur, slugs, pv, dr
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[]) WITH ORDINALITY AS b(id, fp, caps, eps, cur, slugs, pv, dr, n)
        ORDER BY id, n DESC
    ) AS b
    WHERE p.id = b.id
      AND p.status IN ('enrolled', 'active', 'degraded')
      AND (b.fp IS NULL OR p.client_cert_fingerprint = b.fp)
    RETURNING p.id, p.status, p.last_heartbeat_at, p.platform_version
"""


class Reported(NamedTuple):
    """What one heartbeat body carries, ready for the batch statement (JSON text or None each).
    Tuples, not dataclasses: one is built per heartbeat."""

    capabilities: str | None = None
    endpoints: str | None = None
    sync_cursor: str | None = None
    extension_slugs: str | None = None
    platform_version: str | None = None
    data_residency: str | None = None


NOTHING_REPORTED = Reported()


class Beat(NamedTuple):
    status: str
    last_heartbeat_at: datetime
    platform_version: str | None = None


@dataclass
class _Batch:
    ids: list[uuid.UUID] = field(default_factory=list)
    fps: list[str | None] = field(default_factory=list)
    reports: list[Reported] = field(default_factory=list)
    waiters: list[tuple[uuid.UUID, asyncio.Future[Beat | None]]] = field(default_factory=list)


class HeartbeatBatcher:
    """Commits heartbeats in batches on up to `connections` dedicated connections."""

    def __init__(self, database_url: str, *, connections: int = 2, max_batch: int = 1024):
        self._dsn = asyncpg_dsn(database_url)
        self._limit = connections
        self._max_batch = max_batch
        self._pending = _Batch()
        self._in_flight = 0
        self._idle: list[asyncpg.Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"HeartbeatBatcher(connections={self._limit}, in_flight={self._in_flight})"

    async def beat(
        self, peer_id: uuid.UUID, fingerprint: str | None, reported: Reported = NOTHING_REPORTED
    ) -> Beat | None:
        """The peer's status after this heartbeat, or None if it may not heartbeat (401)."""
        future: asyncio.Future[Beat | None] = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending.ids.append(peer_id)
        pending.fps.append(fingerprint)
        pending.reports.append(reported)
        pending.waiters.append((peer_id, future))
        if self._in_flight < self._limit or len(pending.ids) >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, _Batch()
        if not batch.ids:
            return
        self._in_flight += 1
        task = asyncio.create_task(self._commit(batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._pending.ids and self._in_flight < self._limit:
            self._flush()

    async def _commit(self, batch: _Batch) -> None:
        try:
            connection = self._idle.pop() if self._idle else await asyncpg.connect(self._dsn)
        except Exception as e:
            return _fail(batch, e)
        try:
            r = batch.reports
            rows = await connection.fetch(
                _BATCH_UPDATE,
                batch.ids,
                batch.fps,
                [x.capabilities for x in r],
                [x.endpoints for x in r],
                [x.sync_cursor for x in r],
                [x.extension_slugs for x in r],
                [x.platform_version for x in r],
                [x.data_residency for x in r],
            )
        except Exception as e:  # every waiter learns of the failure; none is left hanging
            await discard(connection)
            return _fail(batch, e)
        self._idle.append(connection)
        results = {
            row["id"]: Beat(row["status"], row["last_heartbeat_at"], row["platform_version"]) for row in rows
        }
        for peer_id, future in batch.waiters:
            if not future.done():
                future.set_result(results.get(peer_id))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for connection in idle:
            await discard(connection)


def _fail(batch: _Batch, error: BaseException) -> None:
    log.warning("heartbeat batch of %d failed: %s", len(batch.ids), type(error).__name__)
    for _, future in batch.waiters:
        if not future.done():
            future.set_exception(error)

"""Heartbeat ingestion with group commit.

Each heartbeat still waits for its own durable result (the peer's status, possibly just moved
enrolled/degraded → active), but concurrent heartbeats share one `UPDATE … FROM unnest(…)`:
one round trip and one commit for a whole batch instead of one per request (DESIGN §8).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

HEARTBEAT_STATUSES = ("enrolled", "active", "degraded")

_BATCH_UPDATE = text(
    """
    UPDATE federation_peer AS p SET
        last_heartbeat_at = now(),
        updated_at = CASE WHEN p.status = 'active' THEN p.updated_at ELSE now() END,
        activated_at = CASE WHEN p.status = 'enrolled' THEN now() ELSE p.activated_at END,
        status = CASE WHEN p.status IN ('enrolled', 'degraded') THEN 'active' ELSE p.status END
    FROM (SELECT DISTINCT ON (id) id, fp
          FROM unnest(CAST(:ids AS uuid[]), CAST(:fps AS text[])) AS b(id, fp)) AS b
    WHERE p.id = b.id
      AND p.status IN ('enrolled', 'active', 'degraded')
      AND (b.fp IS NULL OR p.client_cert_fingerprint = b.fp)
    RETURNING p.id, p.status, p.last_heartbeat_at
    """
)


@dataclass(frozen=True)
class Beat:
    status: str
    last_heartbeat_at: datetime


@dataclass
class _Batch:
    ids: list[uuid.UUID] = field(default_factory=list)
    fps: list[str | None] = field(default_factory=list)
    waiters: list[tuple[uuid.UUID, asyncio.Future[Beat | None]]] = field(default_factory=list)


class HeartbeatBatcher:
    """Collects heartbeats for up to `max_delay` seconds or `max_batch` of them, then commits once."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 512, max_delay: float = 0.002):
        self._engine = engine
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._batch = _Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"HeartbeatBatcher(max_batch={self._max_batch}, max_delay={self._max_delay})"

    async def beat(self, peer_id: uuid.UUID, fingerprint: str | None) -> Beat | None:
        """The peer's status after this heartbeat, or None if it may not heartbeat (401)."""
        future: asyncio.Future[Beat | None] = asyncio.get_running_loop().create_future()
        batch = self._batch
        batch.ids.append(peer_id)
        batch.fps.append(fingerprint)
        batch.waiters.append((peer_id, future))
        if len(batch.ids) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, _Batch()
        if batch.ids:
            task = asyncio.create_task(self._commit(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit(self, batch: _Batch) -> None:
        try:
            async with self._engine.begin() as conn:
                rows = (await conn.execute(_BATCH_UPDATE, {"ids": batch.ids, "fps": batch.fps})).all()
        except Exception as e:  # every waiter learns of the failure; none is left hanging
            for _, future in batch.waiters:
                if not future.done():
                    future.set_exception(e)
            return
        results: dict[Any, Beat] = {row.id: Beat(row.status, row.last_heartbeat_at) for row in rows}
        for peer_id, future in batch.waiters:
            if not future.done():
                future.set_result(results.get(peer_id))

    async def close(self) -> None:
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

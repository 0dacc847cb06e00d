"""The transactional outbox: a job is recorded in the transaction of the change it must follow.

Enqueueing to Redis after a commit loses the job when the process dies between the two, or when
Redis is away at that moment. So the change's own transaction adds an entry to `job_outbox`; the
relay (beside every primary-duties worker) dispatches due entries to arq, and the job closes its
entry when it ran to the end. A dispatched entry whose worker died is dispatched again once its
lease runs out, under a new arq job id: the old one stays locked inside arq for its whole timeout,
which is why the outbox, not arq, owns retries. Jobs are idempotent, so a second run is harmless;
a run of an attempt the relay has already replaced does nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.database import session_scope
from hub.federation.findings import service as findings_service
from hub.federation.findings.models import Finding
from hub.outbox.models import OutboxEntry
from hub.runtime import PRIMARY_QUEUE, HubRuntime

log = logging.getLogger(__name__)

BATCH = 100
FAILING = "outbox_entry_failing"


def _after(seconds: float) -> Any:
    return func.clock_timestamp() + timedelta(seconds=seconds)


async def add(
    session: AsyncSession,
    *,
    job: str,
    kwargs: dict[str, Any],
    key: str | None = None,
    delay: float = 0.0,
    queue: str = PRIMARY_QUEUE,
) -> uuid.UUID:
    """Record `job(**kwargs)` in the caller's transaction; the id of its entry.

    With `key`, one open entry per key: asking again while it is open makes it due now and makes
    a run already under way not count (it may have read the state before this change).
    """
    statement = insert(OutboxEntry).values(
        job=job,
        queue=queue,
        kwargs=kwargs,
        dedupe_key=key,
        requested_at=func.clock_timestamp(),
        available_at=_after(delay),
    )
    if key is not None:
        statement = statement.on_conflict_do_update(
            index_elements=[OutboxEntry.dedupe_key],
            index_where=OutboxEntry.done_at.is_(None),
            set_={
                "requested_at": func.clock_timestamp(),
                "available_at": func.least(OutboxEntry.available_at, statement.excluded.available_at),
            },
        )
    entry_id = await session.scalar(statement.returning(OutboxEntry.id))
    assert entry_id is not None
    return entry_id


async def close(session: AsyncSession, *, key: str) -> None:
    """The work under `key` was done in the caller's transaction (by the request itself)."""
    await session.execute(
        update(OutboxEntry)
        .where(OutboxEntry.dedupe_key == key, OutboxEntry.done_at.is_(None))
        .values(done_at=func.clock_timestamp(), last_error=None)
    )


async def dispatch(runtime: HubRuntime, *, ids: list[uuid.UUID] | None = None) -> int:
    """Hand due entries to arq and lease them; how many. Redis down: raises, nothing changes here.

    An entry enqueued before a failure is enqueued again next time under the same arq job id,
    which arq refuses as a duplicate: the dispatch is idempotent.
    """
    lease = runtime.settings.outbox.lease_seconds
    async with session_scope(runtime.sessionmaker) as session:
        query = (
            select(OutboxEntry)
            .where(OutboxEntry.done_at.is_(None), OutboxEntry.available_at <= func.clock_timestamp())
            .order_by(OutboxEntry.available_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        if ids is not None:
            query = query.where(OutboxEntry.id.in_(ids))
        entries = (await session.scalars(query)).all()
        for entry in entries:
            attempt = entry.attempts + 1
            redis = runtime.primary_queue() if entry.queue == PRIMARY_QUEUE else runtime.redis
            await redis.enqueue_job(
                entry.job,
                outbox_id=str(entry.id),
                attempt=attempt,
                **entry.kwargs,
                _job_id=f"outbox:{entry.id}:{attempt}",
                _queue_name=entry.queue,
            )
        if entries:
            await session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_([e.id for e in entries]))
                .values(
                    attempts=OutboxEntry.attempts + 1,
                    last_dispatched_at=func.clock_timestamp(),
                    available_at=_after(lease),
                )
            )
    return len(entries)


async def dispatch_now(runtime: HubRuntime, ids: list[uuid.UUID]) -> None:
    """Right after the commit, so the job does not wait for the relay; the relay covers a failure."""
    if not ids:
        return
    try:
        await dispatch(runtime, ids=ids)
    except Exception as e:  # Redis or the database away: the entries stay due for the relay
        log.warning("%d outbox job(s) left for the relay: %s", len(ids), type(e).__name__)


async def claim(runtime: HubRuntime, *, entry_id: uuid.UUID, attempt: int) -> bool:
    """This run is the entry's current attempt and the entry is open: start it (lease renewed)."""
    async with session_scope(runtime.sessionmaker) as session:
        claimed = await session.scalar(
            update(OutboxEntry)
            .where(
                OutboxEntry.id == entry_id,
                OutboxEntry.attempts == attempt,
                OutboxEntry.done_at.is_(None),
            )
            .values(
                started_at=func.clock_timestamp(), available_at=_after(runtime.settings.outbox.lease_seconds)
            )
            .returning(OutboxEntry.id)
        )
    return claimed is not None


async def finish(runtime: HubRuntime, *, entry_id: uuid.UUID, attempt: int) -> None:
    """Done, unless the work was asked for again while this run was under way (then due now)."""
    async with session_scope(runtime.sessionmaker) as session:
        await session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == entry_id, OutboxEntry.attempts == attempt)
            .values(
                done_at=case(
                    (OutboxEntry.requested_at <= OutboxEntry.started_at, func.clock_timestamp()),
                    else_=None,
                ),
                available_at=func.clock_timestamp(),
                last_error=None,
            )
        )


async def reschedule(
    runtime: HubRuntime, *, entry_id: uuid.UUID, attempt: int, delay: float, error: str
) -> None:
    """Not done: due again after `delay`, with what went wrong (never a secret: see `describe`)."""
    async with session_scope(runtime.sessionmaker) as session:
        await session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == entry_id, OutboxEntry.attempts == attempt)
            .values(available_at=_after(delay), last_error=error[:1000])
        )


def backoff(settings: Settings, attempt: int) -> float:
    return float(min(settings.outbox.max_backoff_seconds, 2.0**attempt))


async def sweep(session: AsyncSession, *, settings: Settings) -> int:
    """A finding per open entry that failed `failing_after_attempts` times; resolve the rest."""
    failing = (
        await session.execute(
            select(
                OutboxEntry.id,
                OutboxEntry.job,
                OutboxEntry.kwargs,
                OutboxEntry.attempts,
                OutboxEntry.last_error,
            ).where(
                OutboxEntry.done_at.is_(None),
                OutboxEntry.last_error.is_not(None),
                OutboxEntry.attempts >= settings.outbox.failing_after_attempts,
            )
        )
    ).all()
    for entry_id, job, kwargs, attempts, error in failing:
        await findings_service.open_finding(
            session,
            kind=FAILING,
            subject=str(entry_id),
            peer_id=_peer_of(kwargs),
            severity="error",
            message=(
                f"Job {job} has failed {attempts} times and is retried with backoff ({error}); "
                "fix what it names (the peer unreachable, the secret store or primary down); it then "
                "completes by itself"
            ),
            details={"job": job, "kwargs": kwargs, "attempts": attempts, "last_error": error},
        )
    open_subjects = (
        await session.scalars(
            select(Finding.subject).where(Finding.kind == FAILING, Finding.resolved_at.is_(None))
        )
    ).all()
    cleared = sorted(set(open_subjects) - {str(row[0]) for row in failing})
    if cleared:
        await findings_service.resolve(session, kind=FAILING, subjects=cleared)
    return len(failing)


def _peer_of(kwargs: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(kwargs["peer_id"]))
    except (KeyError, ValueError):
        return None

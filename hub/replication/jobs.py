"""arq jobs for cluster_member replication: set-up at spawn and on retry, tear-down, the slot janitor.

Jobs take ids and load rows again; every one of them is safe to run twice or at the same time.
Transient failures (the secret store or the database unreachable) are retried with a growing delay;
the setup records `state: error` and a finding at once, so an operator sees why it is waiting.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry
from arq.connections import ArqRedis

from hub.database import session_scope
from hub.replication import janitor
from hub.replication.exceptions import SetupFailed
from hub.replication.service import PgReplicaSetupService
from hub.runtime import PRIMARY_QUEUE, HubRuntime

log = logging.getLogger(__name__)

SETUP_JOB = "cluster_member_pg_replica_setup"
TEARDOWN_JOB = "cluster_member_pg_replica_teardown"
JANITOR_JOB = "replication_slot_janitor"
MAX_TRIES = 6


def retry_delay(job_try: int) -> float:
    """5 s, 10 s, 20 s … at most 5 minutes: a restarting Vault or database gets time to come back."""
    return min(300.0, 5.0 * 2 ** (job_try - 1))


async def enqueue_setup(redis: ArqRedis, *, peer_id: uuid.UUID, retry: bool = False) -> str:
    """Once per peer at spawn; a retry gets its own id, or arq would dedupe it against the finished job."""
    job_id = f"{SETUP_JOB}:{peer_id}" + (f":retry:{uuid.uuid4().hex}" if retry else "")
    await redis.enqueue_job(SETUP_JOB, peer_id=str(peer_id), _job_id=job_id, _queue_name=PRIMARY_QUEUE)
    return job_id


async def enqueue_teardown(redis: ArqRedis, *, peer_id: uuid.UUID, expired: bool = False) -> str:
    job_id = f"{TEARDOWN_JOB}:{peer_id}" + (":expired" if expired else "")
    await redis.enqueue_job(
        TEARDOWN_JOB, peer_id=str(peer_id), expired=expired, _job_id=job_id, _queue_name=PRIMARY_QUEUE
    )
    return job_id


def _retrying(ctx: dict[str, Any], failure: SetupFailed) -> bool:
    return failure.transient and ctx.get("job_try", 1) < MAX_TRIES


async def cluster_member_pg_replica_setup(ctx: dict[str, Any], *, peer_id: str) -> dict[str, Any] | None:
    """Slot, role and credential for a cluster_member; the new `metadata.cluster_pg` (no password)."""
    service = PgReplicaSetupService(ctx["runtime"])
    pid = uuid.UUID(peer_id)
    try:
        return await service.setup(peer_id=pid)
    except SetupFailed as failure:
        retrying = _retrying(ctx, failure)
        log.warning(
            "replication setup for %s failed (try %s): %s", pid, ctx.get("job_try", 1), failure.reason
        )
        try:
            await service.record_failure(peer_id=pid, failure=failure, retrying=retrying)
        except SetupFailed as unrecorded:
            log.warning("could not record the failure of %s: %s", pid, unrecorded.reason)
        if retrying:
            raise Retry(defer=retry_delay(ctx.get("job_try", 1))) from None
        return {"state": "error", "reason": failure.reason}


async def cluster_member_pg_replica_teardown(
    ctx: dict[str, Any], *, peer_id: str, expired: bool = False
) -> dict[str, Any] | None:
    """Drop the slot and role and delete the secret of a revoked (or expired, unaccepted) member."""
    try:
        return await PgReplicaSetupService(ctx["runtime"]).teardown(
            peer_id=uuid.UUID(peer_id), expired=expired
        )
    except SetupFailed as failure:
        log.warning(
            "replication teardown for %s failed (try %s): %s", peer_id, ctx.get("job_try", 1), failure.reason
        )
        if _retrying(ctx, failure):
            raise Retry(defer=retry_delay(ctx.get("job_try", 1))) from None
        return {"state": "error", "reason": failure.reason}


async def replication_slot_janitor(ctx: dict[str, Any]) -> dict[str, int]:
    """Report troubled slots; tear down members revoked or never accepted (the janitor's cron)."""
    runtime: HubRuntime = ctx["runtime"]
    async with session_scope(runtime.sessionmaker) as session:
        result = await janitor.sweep_slots(session, settings=runtime.settings)
        members = await janitor.members_to_tear_down(session)
    for peer_id, expired in members:
        await enqueue_teardown(runtime.primary_queue(), peer_id=peer_id, expired=expired)
    result["teardowns"] = len(members)
    if result["reported"] or result["resolved"] or members:
        log.info("replication slot janitor: %s", result)
    return result

"""arq jobs for cluster_member replication: set-up at spawn and on retry, tear-down, the slot janitor.

Jobs take ids and load rows again; every one of them is safe to run twice or at the same time.
They are requested through the transactional outbox (hub.outbox), in the transaction of the change
they follow. Transient failures (the secret store or the database unreachable) are retried with a
growing delay; the setup records `state: error` and a finding at once, so an operator sees why it
is waiting.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry
from sqlalchemy.ext.asyncio import AsyncSession

from hub.database import session_scope
from hub.outbox import service as outbox_service
from hub.replication import janitor, stalls
from hub.replication.exceptions import SetupFailed
from hub.replication.service import PgReplicaSetupService
from hub.runtime import HubRuntime

log = logging.getLogger(__name__)

SETUP_JOB = "cluster_member_pg_replica_setup"
TEARDOWN_JOB = "cluster_member_pg_replica_teardown"
JANITOR_JOB = "replication_slot_janitor"
MAX_TRIES = 6


def retry_delay(job_try: int) -> float:
    """5 s, 10 s, 20 s … at most 5 minutes: a restarting Vault or database gets time to come back."""
    return min(300.0, 5.0 * 2 ** (job_try - 1))


async def request_setup(session: AsyncSession, *, peer_id: uuid.UUID) -> uuid.UUID:
    """In the caller's transaction: at spawn, and when an operator retries (one open per peer)."""
    return await outbox_service.add(
        session, job=SETUP_JOB, kwargs={"peer_id": str(peer_id)}, key=f"{SETUP_JOB}:{peer_id}"
    )


async def request_teardown(session: AsyncSession, *, peer_id: uuid.UUID, expired: bool = False) -> uuid.UUID:
    return await outbox_service.add(
        session,
        job=TEARDOWN_JOB,
        kwargs={"peer_id": str(peer_id), "expired": expired},
        key=f"{TEARDOWN_JOB}:{peer_id}" + (":expired" if expired else ""),
    )


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
    """Report troubled slots and stalled set-ups; tear down members revoked or never accepted."""
    runtime: HubRuntime = ctx["runtime"]
    async with session_scope(runtime.sessionmaker) as session:
        result = await janitor.sweep_slots(session, settings=runtime.settings)
        result |= await stalls.sweep(session, settings=runtime.settings)
        members = await janitor.members_to_tear_down(session)
        entries = [
            await request_teardown(session, peer_id=peer_id, expired=expired) for peer_id, expired in members
        ]
    await outbox_service.dispatch_now(runtime, entries)
    result["teardowns"] = len(members)
    if any(count for name, count in result.items() if name != "slots"):
        log.info("replication slot janitor: %s", result)
    return result

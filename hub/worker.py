"""arq WorkerSettings: functions and cron jobs gathered from the domains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq import cron, func
from arq.cron import CronJob

from hub.config import Settings, get_settings
from hub.federation import bootstrap
from hub.federation.accept import service as accept_service
from hub.federation.findings.jobs import federation_findings_sweep
from hub.federation.grants import jobs as grants_jobs
from hub.federation.grants import service as grants_service
from hub.federation.peers import jobs as peers_jobs
from hub.federation.policies import jobs as policies_jobs
from hub.jobcodec import ARQ_CODEC
from hub.observability.jobs import instrumented
from hub.outbox.jobs import outboxed, relay_loop
from hub.replication import jobs as replication_jobs
from hub.runtime import PRIMARY_QUEUE, HubRuntime, arq_redis_settings, queue_name
from hub.spawn import jobs as spawn_jobs

log = logging.getLogger(__name__)


def every(seconds: float) -> dict[str, Any]:
    """arq cron fields for "every N seconds", N rounded to a divisor of a minute or an hour."""
    whole = max(1, round(seconds))
    if whole < 60:
        step = max(d for d in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) if d <= whole)
        return {"second": set(range(0, 60, step))}
    minutes = max(d for d in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60) if d <= whole // 60)
    return {"minute": set(range(0, 60, minutes)), "second": 0}


async def heartbeat_loop(runtime: HubRuntime) -> None:
    """This node's own duty (never queued, so it stays on this node): enroll, then heartbeat."""
    interval = runtime.settings.federation.heartbeat_interval_seconds
    while True:
        try:
            await bootstrap.sync_with_parent(runtime)
        except Exception as e:  # one failed tick must not stop the next
            log.warning("heartbeat tick failed: %s", type(e).__name__)
        await asyncio.sleep(interval)


async def on_startup(ctx: dict[str, Any]) -> None:
    """Use the process's runtime when one was handed over (serve), else open this worker's own."""
    runtime: HubRuntime | None = ctx.get("runtime")
    if runtime is None:
        settings: Settings = ctx.get("settings") or get_settings()
        runtime = ctx["runtime"] = await HubRuntime.open(settings)
        ctx["owns_runtime"] = True
    if ctx.get("heartbeats", True):
        ctx["heartbeat_task"] = asyncio.create_task(heartbeat_loop(runtime))
    if ctx.get("relay", False):
        ctx["relay_task"] = asyncio.create_task(relay_loop(runtime))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    for name in ("heartbeat_task", "relay_task"):
        task: asyncio.Task[None] | None = ctx.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    runtime: HubRuntime | None = ctx.get("runtime")
    if runtime is not None and ctx.get("owns_runtime"):
        await runtime.close()


# Work on the PostgreSQL primary itself (roles, slots) needs the hub owner's privileges, which a
# cluster_member node's hub does not have: it runs on its own queue, consumed only by workers of
# nodes with primary duties. Everything else is platform work any node's worker may take.
FUNCTIONS: list[Any] = []


def _job(function: Any, name: str) -> Any:
    """A job of the transactional outbox: the outbox, not arq, tries it again (see hub.outbox)."""
    return func(outboxed(function), name=name, max_tries=1)


PRIMARY_FUNCTIONS: list[Any] = [
    _job(replication_jobs.cluster_member_pg_replica_setup, replication_jobs.SETUP_JOB),
    _job(replication_jobs.cluster_member_pg_replica_teardown, replication_jobs.TEARDOWN_JOB),
    # Provisioning, grants, policy pushes and revoke notices use this platform's data dir,
    # federation CA and secret store, which a cluster_member node (its own CA, its own local
    # store) does not hold.
    _job(spawn_jobs.spawn_node_provision, spawn_jobs.PROVISION_JOB),
    _job(policies_jobs.intervention_policy_cascade, policies_jobs.CASCADE_JOB),
    _job(peers_jobs.federation_peer_revoke_notice, peers_jobs.REVOKE_NOTICE_JOB),
    _job(grants_jobs.federation_grant_revoke_notice, grants_service.REVOKE_NOTICE_JOB),
    _job(grants_jobs.federation_grant_forget_unclaimed_bearer, accept_service.FORGET_UNCLAIMED_JOB),
]


def cron_jobs(settings: Settings) -> list[CronJob]:
    return [
        cron(
            federation_findings_sweep,
            name="federation_findings_sweep",
            unique=True,
            **every(settings.federation.findings_interval_seconds),
        ),
    ]


def primary_cron_jobs(settings: Settings) -> list[CronJob]:
    return [
        cron(
            replication_jobs.replication_slot_janitor,
            name=replication_jobs.JANITOR_JOB,
            unique=True,
            **every(settings.federation.findings_interval_seconds),
        ),
        cron(
            grants_jobs.federation_grant_probe,
            name=grants_jobs.PROBE_JOB,
            unique=True,
            **every(settings.federation.findings_interval_seconds),
        ),
        cron(
            grants_jobs.federation_grant_purge, name=grants_jobs.PURGE_JOB, unique=True, minute=17, second=0
        ),
    ]


def worker_settings(
    settings: Settings,
    *,
    heartbeats: bool = True,
    primary: bool = False,
    runtime: HubRuntime | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker`: the platform queue, or (`primary`) the primary's duties.

    The heartbeat sender runs beside the platform worker only, so one process sends one. Workers
    in one process share `runtime` (one engine, one Redis pool, one CA) when it is given.
    """
    return {
        "functions": instrumented(PRIMARY_FUNCTIONS if primary else FUNCTIONS),
        "cron_jobs": instrumented(primary_cron_jobs(settings) if primary else cron_jobs(settings)),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "redis_settings": arq_redis_settings(
            settings.primary_redis_url() if primary else settings.redis_url()
        ),
        "queue_name": PRIMARY_QUEUE if primary else queue_name(),
        "ctx": {
            "settings": settings,
            "heartbeats": heartbeats and not primary,
            "relay": primary,
            "runtime": runtime,
        },
        "handle_signals": False,
        **ARQ_CODEC,
    }

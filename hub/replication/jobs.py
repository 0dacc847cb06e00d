"""arq jobs for cluster_member replication: set-up at spawn, tear-down at revoke."""

from __future__ import annotations

import uuid

from arq.connections import ArqRedis

SETUP_JOB = "cluster_member_pg_replica_setup"
TEARDOWN_JOB = "cluster_member_pg_replica_teardown"


async def enqueue_setup(redis: ArqRedis, *, peer_id: uuid.UUID) -> None:
    await redis.enqueue_job(SETUP_JOB, peer_id=str(peer_id), _job_id=f"{SETUP_JOB}:{peer_id}")


async def enqueue_teardown(redis: ArqRedis, *, peer_id: uuid.UUID) -> None:
    await redis.enqueue_job(TEARDOWN_JOB, peer_id=str(peer_id), _job_id=f"{TEARDOWN_JOB}:{peer_id}")

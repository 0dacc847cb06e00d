"""arq job: finish the provisioning of a spawn whose process died before its provisioner did.

The spawn provisions in the request itself; its outbox entry waits one lease and then runs this,
which does nothing unless the node is still `pending` and no process is provisioning it.
"""

from __future__ import annotations

import uuid
from typing import Any

from arq import Retry

from hub.runtime import HubRuntime
from hub.spawn import service as spawn_service

PROVISION_JOB = spawn_service.PROVISION_JOB


async def spawn_node_provision(ctx: dict[str, Any], *, node_id: str, peer_id: str) -> str:
    runtime: HubRuntime = ctx["runtime"]
    outcome = await spawn_service.resume_provisioning(runtime=runtime, node_id=uuid.UUID(node_id))
    if outcome is None:  # the spawn's own request is still provisioning it
        raise Retry(defer=runtime.settings.outbox.lease_seconds)
    return outcome

"""arq job: push the cascaded policies to one managed child (after enrollment, on every change).

Pushes are full sets stamped with the time they were generated, so duplicates are harmless and
an older push that arrives late is ignored by the child. They are requested through the outbox in
the transaction of the change, one open request per child: a change while a push is under way
makes it run again.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry
from sqlalchemy.ext.asyncio import AsyncSession

from hub.federation.grants.exceptions import ChildRefused, ChildUnreachable, ChildUntrusted
from hub.federation.policies import cascade
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime

log = logging.getLogger(__name__)

CASCADE_JOB = "intervention_policy_cascade"
MAX_TRIES = 8


async def request_cascade(session: AsyncSession, *, peer_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return [
        await outbox_service.add(
            session, job=CASCADE_JOB, kwargs={"peer_id": str(peer_id)}, key=f"{CASCADE_JOB}:{peer_id}"
        )
        for peer_id in peer_ids
    ]


async def intervention_policy_cascade(ctx: dict[str, Any], *, peer_id: str) -> dict[str, Any]:
    runtime: HubRuntime = ctx["runtime"]
    job_try = ctx.get("job_try", 1)
    try:
        return await cascade.push(runtime, peer_id=uuid.UUID(peer_id))
    except ChildUnreachable as e:
        if job_try >= MAX_TRIES:
            log.warning("policy cascade to %s gave up: %s", peer_id, e.message)
            return {"unreachable": e.message}
        raise Retry(defer=min(60.0, 0.5 * 2**job_try)) from None
    except (ChildRefused, ChildUntrusted) as e:  # a finding says why; retrying will not help
        log.info("policy cascade to %s refused: %s", peer_id, e.message)
        return {"refused": e.details}

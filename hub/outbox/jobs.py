"""Running outbox jobs: the wrapper that closes an entry, and the relay loop that dispatches them."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any

from arq import Retry
from arq.typing import WorkerCoroutine

from hub.exceptions import HubError
from hub.outbox import service as outbox_service
from hub.runtime import HubRuntime

log = logging.getLogger(__name__)


def describe(error: BaseException) -> str:
    """What went wrong, for the entry and its finding: a HubError's message, else only the type
    (a driver's message can carry SQL parameters)."""
    if isinstance(error, HubError):
        return f"{error.code}: {error.message}"
    return type(error).__name__


def outboxed(coroutine: WorkerCoroutine) -> WorkerCoroutine:
    """The job as the relay dispatches it (`outbox_id`, `attempt`): run only the current attempt,
    close the entry when it returns; `Retry` and failures make the entry due again later."""

    @functools.wraps(coroutine)
    async def run(ctx: dict[Any, Any], *, outbox_id: str, attempt: int, **kwargs: Any) -> Any:
        runtime: HubRuntime = ctx["runtime"]
        entry = uuid.UUID(outbox_id)
        if not await outbox_service.claim(runtime, entry_id=entry, attempt=attempt):
            return "superseded"  # done already, or dispatched again after its lease ran out
        try:
            result = await coroutine({**ctx, "job_try": attempt}, **kwargs)
        except Retry as retry:
            delay = (retry.defer_score or 0) / 1000
            await outbox_service.reschedule(
                runtime, entry_id=entry, attempt=attempt, delay=delay, error="waiting to retry"
            )
            return f"retry in {delay:.1f}s"
        except Exception as e:
            delay = outbox_service.backoff(runtime.settings, attempt)
            await outbox_service.reschedule(
                runtime, entry_id=entry, attempt=attempt, delay=delay, error=describe(e)
            )
            raise
        await outbox_service.finish(runtime, entry_id=entry, attempt=attempt)
        return result

    return run


async def relay_loop(runtime: HubRuntime) -> None:
    """Dispatch due entries every `poll_seconds`; Redis or the database away only delays them."""
    interval = runtime.settings.outbox.poll_seconds
    failing = False
    while True:
        try:
            while await outbox_service.dispatch(runtime) >= outbox_service.BATCH:
                pass
            if failing:
                log.info("outbox relay dispatching again")
            failing = False
        except Exception as e:  # one failed tick must not stop the next
            if not failing:
                log.warning("outbox relay cannot dispatch: %s", type(e).__name__)
            failing = True
        await asyncio.sleep(interval)

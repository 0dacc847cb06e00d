"""arq jobs, observed: duration and outcome per function, and the job on every line it logs.

arq's own hooks (`on_job_start`, `after_job_end`) see neither the function's name nor how it
ended, so each job coroutine is wrapped instead, once, where the worker's settings are built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from typing import Any, TypeVar

from arq import Retry
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Function

from hub.observability import context, metrics

log = logging.getLogger(__name__)
JobT = TypeVar("JobT", Function, CronJob)


def instrument(name: str, coroutine: WorkerCoroutine) -> WorkerCoroutine:
    @functools.wraps(coroutine)
    async def run(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        with context.scope(job_id=str(ctx.get("job_id", "")), function=name):
            started = time.perf_counter()
            outcome = "failed"
            try:
                result = await coroutine(ctx, *args, **kwargs)
                outcome = "ok"
                return result
            except Retry:
                outcome = "retry"
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.job_finished(name, outcome, seconds)
                # One structured line per run: which job (job_id, function), how it ended, how long.
                log.info(
                    "job %s %s in %.3fs",
                    name,
                    outcome,
                    seconds,
                    extra={"outcome": outcome, "duration_seconds": round(seconds, 6)},
                )

    return run


def instrumented(jobs: list[JobT]) -> list[JobT]:
    """Copies of arq functions or cron jobs whose coroutines are observed."""
    return [dataclasses.replace(job, coroutine=instrument(job.name, job.coroutine)) for job in jobs]

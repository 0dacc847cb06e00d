"""What keeps a hub process's parts running through a lost dependency.

The workers, the heartbeat sender and the embedded services' watchdog are *kept*: when one ends
(Redis went away under the arq worker, the database under a job's poll) it is started again after
a backoff, and the process stays up. Only a signal stops them. Stopping is bounded: a worker that
cannot say goodbye to a vanished Redis is dropped after `STOP_SECONDS`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import arq

from hub.embedded.services import EmbeddedServices

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
STOP_SECONDS = 5.0
WATCH_INTERVAL = 1.0

Start = Callable[[], Coroutine[Any, Any, None]]


async def keep_running(name: str, start: Start, stop: asyncio.Event) -> None:
    """Run `start()` again whenever it ends or fails, backing off from 0.5 s to 15 s, until `stop`."""
    delay = BACKOFF_FIRST
    while not stop.is_set():
        try:
            await start()
            reason = "ended"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the whole point: a lost dependency must not end the process
            reason = f"{type(e).__name__}: {str(e)[:200]}"
        if stop.is_set():
            return
        log.warning("%s stopped (%s); starting it again in %.1fs", name, reason, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, BACKOFF_MAX)


def worker_runner(make: Callable[[], arq.Worker]) -> Start:
    """A fresh arq.Worker per start (a worker that lost Redis keeps stale state), always stopped."""

    async def run() -> None:
        worker = make()
        try:
            await worker.async_run()
        finally:
            await stop_worker(worker)

    return run


async def stop_worker(worker: arq.Worker) -> None:
    """Cancel the worker's jobs and close it, within STOP_SECONDS even if Redis is gone."""
    # arq's close() re-raises the cancellation of jobs it interrupts and then skips on_shutdown
    # (which closes the worker's runtime); wait for the interrupted jobs here first.
    for job in worker.tasks.values():
        job.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    try:
        await asyncio.wait_for(asyncio.shield(_close(worker)), STOP_SECONDS)
    except (Exception, asyncio.CancelledError) as e:
        log.info("worker closed without Redis (%s)", type(e).__name__)
        if worker.on_shutdown is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.on_shutdown(worker.ctx), STOP_SECONDS)
        pool, worker._pool = worker._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(close_connection_pool=True), STOP_SECONDS)


async def _close(worker: arq.Worker) -> None:
    await worker.close()


async def watch_embedded(services: EmbeddedServices, stop: asyncio.Event) -> None:
    """Start the embedded PostgreSQL or Redis again, on the same port, when it has died."""
    loop = asyncio.get_running_loop()
    # Its own thread, not the loop's default executor: shutting the loop down never waits on a
    # restart in progress (`EmbeddedServices.stop()` waits for it instead, under its lock).
    pool = ThreadPoolExecutor(1, thread_name_prefix="embedded-watch")
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
            if stop.is_set():
                return
            try:
                await loop.run_in_executor(pool, services.restart_dead)
            except Exception as e:
                log.warning("embedded services: restart failed: %s", e)
    finally:
        pool.shutdown(wait=False)

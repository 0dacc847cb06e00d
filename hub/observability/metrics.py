"""What this process counts as it works: spawns, accepts, jobs, failed scrapes.

These live in prometheus-client's default registry, per process: with several API and worker
processes, Prometheus scrapes each and sums. What the database knows (peers, findings, slots) is
not counted here but read at scrape time (`hub.observability.scrape`), so every process reports
the same truth however many there are.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

from hub.exceptions import Conflict, HubError, Unauthorized

# `_created` series double the output and nobody here graphs them.
disable_created_metrics()

P = ParamSpec("P")
T = TypeVar("T")

SPAWNS = Counter(
    "powernode_spawns",
    "Spawn requests that reached the spawn service, by spawn mode and outcome (ok, invalid, failed).",
    ["mode", "outcome"],
)
ACCEPTS = Counter(
    "powernode_accepts",
    "Accept calls by outcome (ok, retry, unauthorized, conflict, invalid, error).",
    ["outcome"],
)
JOBS = Counter(
    "powernode_jobs",
    "arq job runs by function and outcome (ok, retry, failed, cancelled).",
    ["function", "outcome"],
)
JOB_DURATION = Histogram(
    "powernode_job_duration_seconds",
    "How long arq job runs took, by function.",
    ["function"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SCRAPE_ERRORS = Counter(
    "powernode_scrape_errors",
    "Scrape-time database queries that failed or timed out, by query.",
    ["query"],
)

ACCEPT_OUTCOMES = ("ok", "retry", "unauthorized", "conflict", "invalid", "error")
for _outcome in ACCEPT_OUTCOMES:  # present from the start, so rate() sees the first one
    ACCEPTS.labels(outcome=_outcome)


def accepted(*, retry: bool) -> None:
    """A successful accept: the first one for its token, or the same key asking again."""
    ACCEPTS.labels(outcome="retry" if retry else "ok").inc()


def _accept_failure(error: BaseException) -> str:
    if isinstance(error, Unauthorized):
        return "unauthorized"
    if isinstance(error, Conflict):
        return "conflict"
    return "invalid" if isinstance(error, HubError) and error.status_code < 500 else "error"


def counts_accept_failures(accept: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorates the accept service: each refusal counted by kind (successes call `accepted`)."""

    @functools.wraps(accept)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await accept(*args, **kwargs)
        except Exception as e:
            ACCEPTS.labels(outcome=_accept_failure(e)).inc()
            raise

    return wrapper


def counts_spawns(spawn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorates the spawn service (keyword `request` with a `spawn_mode`): one count per call."""

    @functools.wraps(spawn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        mode = str(getattr(kwargs.get("request"), "spawn_mode", "unknown"))
        outcome = "failed"
        try:
            result = await spawn(*args, **kwargs)
            outcome = "ok"
            return result
        except HubError as e:
            # A provisioner failure is ours to fix; a bad template or body is the caller's.
            outcome = "invalid" if e.status_code < 500 and e.code != "PROVISION_FAILED" else "failed"
            raise
        finally:
            SPAWNS.labels(mode=mode, outcome=outcome).inc()

    return wrapper


def job_finished(function: str, outcome: str, seconds: float) -> None:
    JOBS.labels(function=function, outcome=outcome).inc()
    JOB_DURATION.labels(function=function).observe(seconds)


def scrape_failed(query: str) -> None:
    SCRAPE_ERRORS.labels(query=query).inc()


@contextmanager
def served_on(address: tuple[str, int] | None) -> Iterator[None]:
    """This process's metrics over HTTP at `address` while the block runs (for a lone worker)."""
    if address is None:
        yield
        return
    host, port = address
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as e:
        raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

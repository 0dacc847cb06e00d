"""A lost dependency answers 503, never 500; a lost race with another transaction is retried.

Every request goes through `guarded()`, except the heartbeat's raw path, which answers each of
its failures itself (a lost database is its own 503). It classifies what escaped the app:
- PostgreSQL unreachable (refused, dropped, starting up, shutting down, pool exhausted waiting for
  it): 503 `DATABASE_UNAVAILABLE`;
- Redis unreachable: 503 `REDIS_UNAVAILABLE`;
- a full disk (ENOSPC, EDQUOT) under a secret or file the hub writes: 507 `INSUFFICIENT_STORAGE`
  (the transaction was rolled back, so nothing half-made stays);
- a serialization failure or a deadlock: the transaction was rolled back, so the request is run
  again (its body replayed) up to `RETRIES` times, then 503 `TRY_AGAIN`.
Nothing is retried once the response has started."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import random
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.wire import error_body, send_json

log = logging.getLogger(__name__)

RETRIES = 3
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# Class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P")
_UNAVAILABLE_NAMES = {
    "CannotConnectNowError",
    "ConnectionDoesNotExistError",
    "ConnectionFailureError",
    "AdminShutdownError",
    "CrashShutdownError",
    "InterfaceError",
    "InternalClientError",
}


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) and orig not in seen else None
        current = current or seen[-1].__cause__ or seen[-1].__context__
    return seen


def _sqlstate(error: BaseException) -> str | None:
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(error, attribute, None)
        if isinstance(value, str):
            return value
    return None


def classify(error: BaseException) -> str | None:
    """'retry', 'database', 'redis', 'disk' or None (not ours: a real bug, left to the 500 handler)."""
    chain = _chain(error)
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return "disk"
    if any(isinstance(e, RedisConnectionError | RedisTimeoutError) for e in chain):
        return "redis"
    in_database = any(isinstance(e, DBAPIError | PoolTimeout) for e in chain) or any(
        type(e).__module__.startswith("asyncpg") for e in chain
    )
    for e in chain:
        state = _sqlstate(e)
        if state in _RETRYABLE_SQLSTATES:
            return "retry"
        if state is not None and state.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
            return "database"
    if isinstance(error, PoolTimeout):
        return "database"
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return "database"
    for e in chain:
        if type(e).__name__ in _UNAVAILABLE_NAMES and type(e).__module__.startswith(
            ("asyncpg", "sqlalchemy")
        ):
            return "database"
        if isinstance(e, OSError | TimeoutError | asyncio.TimeoutError) and (
            in_database or _raised_in_database(e)
        ):
            return "database"
    return None


def _raised_in_database(error: BaseException) -> bool:
    """asyncpg's connect() lets the socket's OSError through: look at where it was raised."""
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        tb = tb.tb_next
    return False


_MESSAGES = {
    "database": ("DATABASE_UNAVAILABLE", "The database is unavailable; try again shortly"),
    "redis": ("REDIS_UNAVAILABLE", "Redis (the job queue) is unavailable; try again shortly"),
    "disk": ("INSUFFICIENT_STORAGE", "The hub's data dir is full: nothing was kept; free space and retry"),
    "retry": ("TRY_AGAIN", "The request collided with a concurrent change; try again"),
}


def unavailable_response(kind: str) -> tuple[int, bytes]:
    code, message = _MESSAGES[kind]
    status = 507 if kind == "disk" else 503
    return status, json.dumps(error_body(message, code), separators=(",", ":")).encode()


class _Replay:
    """The request's receive(), recorded so that a retry sees the same body."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._seen: list[Message] = []
        self._position = 0

    async def __call__(self) -> Message:
        if self._position < len(self._seen):
            message = self._seen[self._position]
        else:
            message = await self._receive()
            self._seen.append(message)
        self._position += 1
        return message

    def rewind(self) -> None:
        self._position = 0


async def guarded(
    app: ASGIApp | Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    started = False

    async def tracked(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    replay = _Replay(receive)
    attempt = 0
    while True:
        try:
            await app(scope, replay, tracked)
            return
        except Exception as e:
            kind = classify(e)
            if kind is None or started:
                raise
            if kind == "retry" and attempt < RETRIES:
                attempt += 1
                log.info(
                    "%s %s: %s, retrying (%d)",
                    scope.get("method"),
                    scope.get("path"),
                    type(e).__name__,
                    attempt,
                )
                await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter
                replay.rewind()
                continue
            log.warning(
                "%s %s: %s unavailable (%s)", scope.get("method"), scope.get("path"), kind, type(e).__name__
            )
            status, body = unavailable_response(kind)
            await send_json(send, status, body, (b"retry-after", b"2"))
            return


class GuardMiddleware:
    """`guarded()` as middleware, inside Starlette's outermost error middleware (which would
    answer 500 first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await guarded(self.app, scope, receive, send)

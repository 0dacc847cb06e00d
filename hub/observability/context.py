"""Who a log line is about: the request id, the calling peer, the job, carried in a contextvar.

A request gets one mutable dict. Binding mutates it in place rather than setting a new value, so
what a dependency learns (FastAPI runs sync dependencies in a thread, on a copy of the context)
still reaches every later line of the same request.
"""

from __future__ import annotations

import functools
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec, Protocol, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")  # nothing that could forge a log line
_fields: ContextVar[dict[str, str] | None] = ContextVar("powernode_log_fields", default=None)

P = ParamSpec("P")


class _HasPeerId(Protocol):
    @property
    def peer_id(self) -> uuid.UUID: ...


R = TypeVar("R", bound=_HasPeerId)


def current() -> dict[str, str]:
    return dict(_fields.get() or {})


def bind(**fields: str) -> None:
    """Add fields to every later line of this request or job; outside one there is nothing to add
    to, and setting a context here would leak the fields into whatever runs next."""
    existing = _fields.get()
    if existing is not None:
        existing.update(fields)


@contextmanager
def scope(**fields: str) -> Iterator[None]:
    """A fresh set of fields for one unit of work (a job), gone when it ends."""
    token = _fields.set(dict(fields))
    try:
        yield
    finally:
        _fields.reset(token)


def binds_peer(identify: Callable[P, R]) -> Callable[P, R]:
    """Decorates the peer authentication so the lines of a peer's request name the peer."""

    @functools.wraps(identify)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        identity = identify(*args, **kwargs)
        if _fields.get() is not None:  # a request's context to add to (the raw paths have none)
            bind(peer_id=str(identity.peer_id))
        return identity

    return wrapper


class RequestContextMiddleware:
    """Gives every HTTP request an id (the caller's X-Request-ID if sane) and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = _fields.set({"request_id": request_id})
        await self.app(scope, receive, send_with_id)
        # Reset only after a normal end: an unhandled error is logged by Starlette's outermost
        # handler, after this frame, and that line should still carry the request id. Each request
        # runs in its own task under uvicorn, so nothing leaks into the next one.
        _fields.reset(token)


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID if sane, else a fresh one."""
    return _incoming_id(scope) or secrets.token_hex(8)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if _ACCEPTABLE_ID.fullmatch(text) else None
    return None

"""The success envelope every operator and federation response uses (wire-compat.md)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from starlette.types import Send

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    success: bool = True
    data: T


class PagedEnvelope(Envelope[T], Generic[T]):
    meta: dict[str, Any]


def envelope(data: Any, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "data": data}
    if meta is not None:
        body["meta"] = meta
    return body


def error_body(message: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message, "code": code}
    if details:
        body["details"] = details
    return body


async def send_json(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    """A whole JSON answer straight onto the ASGI channel: the raw paths (edge refusals, the guard's
    503, heartbeat, accept) that answer without FastAPI."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

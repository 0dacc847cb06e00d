"""The operator API, called in-process (no socket) with the signed-in operator's bearer."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.types import ASGIApp

API = "/api/v1"

# What an operator reads instead of an error code: the API's own message stays beside it.
_HINTS = {
    "UNAUTHORIZED": "Your session is no longer valid: sign in again with a current operator token.",
    "FORBIDDEN": "Your operator token does not allow this action.",
    "NOT_FOUND": "It no longer exists (it may have been removed or the link is old).",
    "CONFLICT": "The request conflicts with the current state; reload to see it.",
    "VALIDATION_FAILED": "Some fields need attention.",
    "DATABASE_UNAVAILABLE": "The hub's database is unreachable right now; try again shortly.",
}


class ApiError(Exception):
    """An error answer from the operator API, in words."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    @property
    def hint(self) -> str:
        return _HINTS.get(self.code, "")

    @property
    def field_messages(self) -> list[str]:
        return [f"{f.get('field') or 'request'}: {f.get('message')}" for f in self.details.get("fields", [])]


class ConsoleApi:
    def __init__(self, app: ASGIApp, bearer: str):
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://console.internal",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=30,
        )

    async def __aenter__(self) -> ConsoleApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def call(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> dict[str, Any]:
        """The whole success envelope (`data`, `meta`); ApiError for any error answer."""
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        response = await self._client.request(method, API + path, params=clean, json=json)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(
                response.status_code, "HTTP_ERROR", f"The hub answered HTTP {response.status_code}."
            )
        if response.status_code >= 400 or not body.get("success", False):
            raise ApiError(
                response.status_code,
                str(body.get("code") or "HTTP_ERROR"),
                str(body.get("error") or f"HTTP {response.status_code}"),
                body.get("details") if isinstance(body.get("details"), dict) else None,
            )
        return body

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.call("GET", path, params=params))["data"]

    async def post(self, path: str, json: Any = None) -> Any:
        return (await self.call("POST", path, json=json))["data"]

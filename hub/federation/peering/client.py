"""Outbound federation calls with our client certificate (mTLS), pinned to the peer's CA."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

API_BASE = "/api/v1/system/federation_api"


@dataclass(frozen=True)
class PeerCredentials:
    url: str
    cert_path: Path
    key_path: Path
    ca_path: Path

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        return context


class PeerCallFailed(Exception):
    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class PeerClient:
    def __init__(self, credentials: PeerCredentials, *, timeout: float = 10.0):
        self._base = credentials.url.rstrip("/") + API_BASE
        self._http = httpx.AsyncClient(
            verify=credentials.ssl_context(),
            timeout=timeout,
            trust_env=False,  # our client certificate and the parent's answers go through no proxy
            follow_redirects=False,
            headers={"User-Agent": "powernode-hub/federation"},
        )

    def __repr__(self) -> str:
        return f"PeerClient({self._base!r})"

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, body: BaseModel | None = None) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                self._base + path,
                json=body.model_dump(mode="json", exclude_none=True) if body else None,
            )
        except httpx.HTTPError as e:
            raise PeerCallFailed(None, f"{type(e).__name__} calling {path}") from e
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code >= 400 or not payload.get("success"):
            raise PeerCallFailed(response.status_code, str(payload.get("error") or response.reason_phrase))
        return payload.get("data") or {}

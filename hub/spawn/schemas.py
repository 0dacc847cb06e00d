"""The spawn request and response (wire-compat shape plus our additions)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.federation.peers.schemas import ChildDetail

SpawnMode = Literal["managed_child", "autonomous_peer", "cluster_member"]
MIN_TTL, MAX_TTL = 86400, 30 * 86400


def check_absolute_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


class SpawnTarget(BaseModel):
    model_config = ConfigDict(extra="ignore")
    template_id: str = Field(min_length=1, max_length=100)
    region: str | None = Field(default=None, max_length=100)
    instance_size: str | None = Field(default=None, max_length=100)
    manual_attach: bool = False


class SpawnRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    spawn_mode: SpawnMode
    parent_url: str = Field(min_length=1, max_length=2048)
    spawn_target: SpawnTarget
    token_ttl_seconds: int | None = Field(default=None, ge=MIN_TTL, le=MAX_TTL)
    name: str | None = Field(default=None, min_length=1, max_length=200)

    _url = field_validator("parent_url")(check_absolute_http_url)


class RotateTokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token_ttl_seconds: int | None = Field(default=None, ge=MIN_TTL, le=MAX_TTL)


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str | None = Field(default=None, max_length=1000)


class SpawnPayloadView(BaseModel):
    """The payload as the original SPA shows it once (the token is in it)."""

    parent_url: str
    acceptance_token: str
    spawn_mode: str
    parent_peer_id: str
    child_template_id: str
    contract_version: str
    region: str | None = None
    initiated_by_user_id: str | None = None


class SpawnResponse(BaseModel):
    child: ChildDetail
    acceptance_token: str
    spawn_payload: SpawnPayloadView


class NodeConsole(BaseModel):
    """A child's node: its state, boot time, and the end of its console with secrets redacted."""

    node_instance_id: str | None
    provider: str | None
    state: str | None
    boot_seconds: float | None
    lines: list[str]

"""Operator-API views of a child (the wire-compat ChildSummary / ChildDetail plus our additions)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class _View(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ChildSummary(_View):
    id: str
    name: str
    remote_instance_url: str | None
    spawn_mode: str
    status: str
    created_at: datetime
    last_heartbeat_at: datetime | None
    acceptance_pending: bool
    acceptance_expires_at: datetime | None
    template_id: str | None
    region: str | None
    emancipated: bool


class PeerSummary(_View):
    """Any peer row: a child we spawned (`spawn_role: parent`) or the parent that spawned us."""

    id: str
    name: str
    spawn_role: str
    spawn_mode: str
    status: str
    remote_url: str | None
    remote_platform_id: str | None
    created_at: datetime
    last_heartbeat_at: datetime | None
    emancipated: bool
    revoked_at: datetime | None
    revoke_reason: str | None


class PeerList(BaseModel):
    peers: list[PeerSummary]
    count: int


class GrantView(_View):
    id: str
    peer_id: str
    direction: str
    resource_kind: str
    remote_subject: str
    permission_scopes: list[str]
    allowlists: dict[str, Any]
    state: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoke_reason: str | None
    purge_after: datetime | None
    metadata: dict[str, Any]


class NodeInstanceView(_View):
    id: str
    name: str
    provider: str
    template_id: str | None
    region: str | None
    state: str
    provider_ref: str | None
    payload_digest: str | None
    error: str | None
    details: dict[str, Any]


class FindingView(_View):
    id: str
    kind: str
    subject: str
    peer_id: str | None
    severity: str
    message: str
    details: dict[str, Any]
    first_seen: datetime
    last_seen: datetime
    resolved_at: datetime | None


class ChildDetail(ChildSummary):
    endpoints: list[Any]
    capabilities: dict[str, Any]
    extension_slugs: list[Any]
    sync_cursor: dict[str, Any] | str | None
    platform_version: str | None
    data_residency: str | None
    metadata: dict[str, Any]
    signed_at: datetime | None
    spawn_role: str
    remote_platform_id: str | None
    contract_version: int | None
    accepted_at: datetime | None
    enrolled_at: datetime | None
    activated_at: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None
    client_cert_fingerprint: str | None
    grants: list[GrantView]
    node_instance: NodeInstanceView | None
    findings: list[FindingView]


class ChildList(BaseModel):
    children: list[ChildSummary]
    count: int


class ChildEnvelope(BaseModel):
    child: ChildDetail

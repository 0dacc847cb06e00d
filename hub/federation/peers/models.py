"""FederationPeer and its AcceptanceToken."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, uuid_pk

PEER_STATUSES = ("proposed", "accepted", "enrolled", "active", "degraded", "suspended", "revoked")
SPAWN_MODES = ("managed_child", "autonomous_peer", "cluster_member")
SPAWN_ROLES = ("parent", "child", "symmetric")

# wire-compat.md: the only status moves a peer may make.
TRANSITIONS: dict[str, frozenset[str]] = {
    "proposed": frozenset({"accepted", "revoked"}),
    "accepted": frozenset({"enrolled", "suspended", "revoked"}),
    "enrolled": frozenset({"active", "suspended", "revoked"}),
    "active": frozenset({"degraded", "suspended", "revoked"}),
    "degraded": frozenset({"active", "suspended", "revoked"}),
    "suspended": frozenset({"accepted", "revoked"}),
    "revoked": frozenset(),
}


class FederationPeer(Base):
    __tablename__ = "federation_peer"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    peer_kind: Mapped[str] = mapped_column(String(32), default="platform")
    spawn_role: Mapped[str] = mapped_column(String(16))
    spawn_mode: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="proposed")
    remote_url: Mapped[str | None] = mapped_column(String(2048))
    remote_platform_id: Mapped[str | None] = mapped_column(String(200))
    contract_version: Mapped[int | None]
    template_id: Mapped[str | None] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    node_instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("node_instance.id", ondelete="SET NULL")
    )
    client_cert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    client_cert_serial: Mapped[str | None] = mapped_column(String(64))
    last_heartbeat_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", default=dict, server_default=text("'{}'::jsonb")
    )
    endpoints: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default=text("'[]'::jsonb"))
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    # What the peer reports at accept and in its heartbeats (the original's columns).
    extension_slugs: Mapped[list[Any]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    sync_cursor: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    platform_version: Mapped[str | None] = mapped_column(String(100))
    data_residency: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    signed_at: Mapped[datetime | None]
    accepted_at: Mapped[datetime | None]
    enrolled_at: Mapped[datetime | None]
    activated_at: Mapped[datetime | None]
    emancipated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_federation_peer_created_at_id", "created_at", "id"),
        Index("ix_federation_peer_role_status", "spawn_role", "status"),
        Index("ix_federation_peer_spawn_mode", "spawn_mode"),
        Index("ix_federation_peer_client_cert_fingerprint", "client_cert_fingerprint"),
    )

    def __repr__(self) -> str:
        return f"<FederationPeer {self.id} {self.spawn_role}/{self.spawn_mode} {self.status}>"


class AcceptanceToken(Base):
    """A single-use acceptance token: the secret's hash only, found by its public id."""

    __tablename__ = "acceptance_token"

    id: Mapped[uuid.UUID] = uuid_pk()
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peer.id", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = now_column()
    consumed_at: Mapped[datetime | None]
    consumed_by: Mapped[str | None] = mapped_column(String(64))
    superseded_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_acceptance_token_peer_id", "peer_id"),)

    def __repr__(self) -> str:
        return f"<AcceptanceToken {self.public_id} peer={self.peer_id}>"

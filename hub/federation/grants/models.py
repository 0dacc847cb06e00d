"""FederationGrant: rights one side holds on the other."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, utcnow, uuid_pk

GRANT_DIRECTIONS = ("held", "granted")
GRANT_SCOPES = ("read", "write", "admin", "migrate")
GRANT_STATES = ("active", "expired", "revoked", "archived")
MANAGED_CHILD_OPERATOR = "managed_child_operator"


class FederationGrant(Base):
    __tablename__ = "federation_grant"

    id: Mapped[uuid.UUID] = uuid_pk()
    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peer.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(16))
    resource_kind: Mapped[str] = mapped_column(String(64))
    remote_subject: Mapped[str] = mapped_column(String(300))
    permission_scopes: Mapped[list[str]] = mapped_column(JSONB, default=list)
    allowlists: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    bearer_secret_ref: Mapped[str | None] = mapped_column(String(300))
    bearer_hash: Mapped[str | None] = mapped_column(String(128))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", default=dict, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    purge_after: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_federation_grant_peer_id", "peer_id"),
        Index("ix_federation_grant_resource_kind", "resource_kind"),
        Index(
            "uq_federation_grant_live",
            "peer_id",
            "direction",
            "resource_kind",
            unique=True,
            postgresql_where=text("revoked_at IS NULL AND archived_at IS NULL"),
        ),
        Index("ix_federation_grant_bearer_hash", "bearer_hash"),
    )

    def state(self, now: datetime | None = None) -> str:
        """Grant state comes from timestamps: archived, revoked, expired or active."""
        now = now or utcnow()
        if self.archived_at is not None:
            return "archived"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "active"

    def __repr__(self) -> str:
        return f"<FederationGrant {self.id} {self.direction} {self.resource_kind} peer={self.peer_id}>"

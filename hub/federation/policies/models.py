"""InterventionPolicy: what to do when an action matching a pattern is attempted."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, uuid_pk

DECISIONS = ("allow", "require_approval", "deny")
ORIGINS = ("local", "cascaded")


class InterventionPolicy(Base):
    __tablename__ = "intervention_policy"

    id: Mapped[uuid.UUID] = uuid_pk()
    action_pattern: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(16), default="local")
    origin_peer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("federation_peer.id", ondelete="SET NULL")
    )
    origin_policy_id: Mapped[uuid.UUID | None]
    scope_tags: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default=text("'[]'::jsonb"))
    overridden: Mapped[bool] = mapped_column(default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()

    __table_args__ = (Index("ix_intervention_policy_action_pattern", "action_pattern"),)

    def __repr__(self) -> str:
        return f"<InterventionPolicy {self.action_pattern}={self.decision} ({self.origin})>"

"""Finding: something an operator should look at, one open per (kind, subject)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, uuid_pk


class Finding(Base):
    __tablename__ = "finding"

    id: Mapped[uuid.UUID] = uuid_pk()
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    peer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("federation_peer.id", ondelete="CASCADE"))
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    message: Mapped[str] = mapped_column(String(1000), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    first_seen: Mapped[datetime] = now_column()
    last_seen: Mapped[datetime] = now_column()
    resolved_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "uq_finding_open",
            "kind",
            "subject",
            unique=True,
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index("ix_finding_peer_id", "peer_id"),
    )

    def __repr__(self) -> str:
        return f"<Finding {self.kind} {self.subject} resolved={self.resolved_at is not None}>"

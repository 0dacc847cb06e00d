"""NodeTemplate (the catalog) and NodeInstance (one provisioned node)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, uuid_pk


class NodeTemplate(Base):
    __tablename__ = "node_template"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    modules: Mapped[list[str]] = mapped_column(JSONB, default=list)
    provisioner: Mapped[str | None] = mapped_column(String(32))
    vm: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"<NodeTemplate {self.id} modules={self.modules}>"


class NodeInstance(Base):
    __tablename__ = "node_instance"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(32))
    template_id: Mapped[str | None] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(32), default="pending")
    provider_ref: Mapped[str | None] = mapped_column(String(2048))
    payload_digest: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()

    __table_args__ = (Index("ix_node_instance_state", "state"),)

    def __repr__(self) -> str:
        return f"<NodeInstance {self.id} {self.provider} {self.state}>"

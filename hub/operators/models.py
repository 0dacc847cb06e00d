"""OperatorToken: how the SPA and the CLI authenticate (hash at rest only)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, uuid_pk


class OperatorToken(Base):
    __tablename__ = "operator_token"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32), default="operator")
    permissions: Mapped[list[str]] = mapped_column(JSONB, default=list)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = now_column()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"<OperatorToken {self.name} {self.public_id} {self.role}>"

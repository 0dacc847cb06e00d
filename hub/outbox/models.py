"""OutboxEntry (`job_outbox`): a job that must follow a committed change, until it has run."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from hub.database import Base, now_column, uuid_pk


class OutboxEntry(Base):
    """One job of the transactional outbox; `done_at` is set once it ran to the end (an open entry,
    `done_at IS NULL`, is work still due or under way).

    `available_at` is when the relay may (re)dispatch it: after a dispatch, the lease; after a
    failure, the backoff. `requested_at` moves when the same work is asked for again while the
    entry is open, so a run that started before the request does not close it.
    """

    __tablename__ = "job_outbox"

    id: Mapped[uuid.UUID] = uuid_pk()
    job: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = now_column()
    requested_at: Mapped[datetime] = now_column()
    available_at: Mapped[datetime] = now_column()
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(1000))
    done_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "uq_job_outbox_open_dedupe_key",
            "dedupe_key",
            unique=True,
            postgresql_where=text("done_at IS NULL"),
        ),
        Index("ix_job_outbox_open_available_at", "available_at", postgresql_where=text("done_at IS NULL")),
    )

    def __repr__(self) -> str:
        return f"<OutboxEntry {self.job} {self.dedupe_key or self.id} attempts={self.attempts}>"

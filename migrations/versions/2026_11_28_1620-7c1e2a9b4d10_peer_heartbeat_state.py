"""What a peer reports in its heartbeats and at accept, as the original stores it.

extension_slugs, sync_cursor (merged per table), platform_version and data_residency beside the
existing endpoints and capabilities.

Revision ID: 7c1e2a9b4d10
Revises: e336d3dd5e28
Create Date: 2026-11-28 16:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "7c1e2a9b4d10"
down_revision: str | None = "e336d3dd5e28"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "federation_peer",
        sa.Column(
            "extension_slugs", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
    )
    op.add_column(
        "federation_peer",
        sa.Column("sync_cursor", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.add_column("federation_peer", sa.Column("platform_version", sa.String(100), nullable=True))
    op.add_column("federation_peer", sa.Column("data_residency", sa.String(100), nullable=True))


def downgrade() -> None:
    for column in ("data_residency", "platform_version", "sync_cursor", "extension_slugs"):
        op.drop_column("federation_peer", column)

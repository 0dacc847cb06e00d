"""operator tokens may expire

Revision ID: b7e1c0a4d2f9
Revises: 7b3e0c2a9f41
Create Date: 2026-11-28 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7e1c0a4d2f9"
down_revision: str | None = "7b3e0c2a9f41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("operator_token", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("operator_token", "expires_at")

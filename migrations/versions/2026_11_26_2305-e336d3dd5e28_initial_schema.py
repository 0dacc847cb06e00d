"""initial schema

Revision ID: e336d3dd5e28
Revises:
Create Date: 2026-11-26 23:05:48.131806
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "e336d3dd5e28"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


node_template = sa.table(
    "node_template",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("description", sa.Text),
    sa.column("modules", postgresql.JSONB),
    sa.column("provisioner", sa.String),
    sa.column("vm", postgresql.JSONB),
)

_PLATFORM = ["powernode-reverse-proxy", "powernode-base", "powernode-hub-backend", "powernode-hub-worker"]
TEMPLATES = [
    {
        "id": "powernode-hub",
        "name": "Powernode hub (full stack)",
        "description": "A full platform with its own PostgreSQL primary and Redis.",
        "modules": [*_PLATFORM, "powernode-postgres", "powernode-redis"],
        "provisioner": None,
        "vm": {"memory_mb": 2048, "cpus": 2},
    },
    {
        "id": "powernode-hub-cluster-member",
        "name": "Powernode hub cluster member",
        "description": "API and worker capacity streaming from the parent's primary; no own PostgreSQL.",
        "modules": [*_PLATFORM, "powernode-pg-replica"],
        "provisioner": None,
        "vm": {"memory_mb": 2048, "cpus": 2},
    },
]


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"], unique=False)
    op.create_index("ix_audit_event_target", "audit_event", ["target"], unique=False)
    op.create_table(
        "node_instance",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("template_id", sa.String(length=100), nullable=True),
        sa.Column("region", sa.String(length=100), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("provider_ref", sa.String(length=2048), nullable=True),
        sa.Column("payload_digest", sa.String(length=64), nullable=True),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_instance")),
    )
    op.create_index("ix_node_instance_state", "node_instance", ["state"], unique=False)
    op.create_table(
        "node_template",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("modules", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("provisioner", sa.String(length=32), nullable=True),
        sa.Column(
            "vm",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_template")),
    )
    op.create_table(
        "operator_token",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("permissions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_token")),
        sa.UniqueConstraint("public_id", name=op.f("uq_operator_token_public_id")),
    )
    op.create_table(
        "federation_peer",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("peer_kind", sa.String(length=32), nullable=False),
        sa.Column("spawn_role", sa.String(length=16), nullable=False),
        sa.Column("spawn_mode", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("remote_url", sa.String(length=2048), nullable=True),
        sa.Column("remote_platform_id", sa.String(length=200), nullable=True),
        sa.Column("contract_version", sa.Integer(), nullable=True),
        sa.Column("template_id", sa.String(length=100), nullable=True),
        sa.Column("region", sa.String(length=100), nullable=True),
        sa.Column("node_instance_id", sa.UUID(), nullable=True),
        sa.Column("client_cert_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("client_cert_serial", sa.String(length=64), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "endpoints",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "capabilities",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("emancipated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_instance_id"],
            ["node_instance.id"],
            name=op.f("fk_federation_peer_node_instance_id_node_instance"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_peer")),
    )
    op.create_index(
        "ix_federation_peer_client_cert_fingerprint",
        "federation_peer",
        ["client_cert_fingerprint"],
        unique=False,
    )
    op.create_index("ix_federation_peer_created_at_id", "federation_peer", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_federation_peer_role_status", "federation_peer", ["spawn_role", "status"], unique=False
    )
    op.create_index("ix_federation_peer_spawn_mode", "federation_peer", ["spawn_mode"], unique=False)
    op.create_table(
        "acceptance_token",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("peer_id", sa.UUID(), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consumed_by", sa.String(length=64), nullable=True),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["peer_id"],
            ["federation_peer.id"],
            name=op.f("fk_acceptance_token_peer_id_federation_peer"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acceptance_token")),
        sa.UniqueConstraint("public_id", name=op.f("uq_acceptance_token_public_id")),
    )
    op.create_index("ix_acceptance_token_peer_id", "acceptance_token", ["peer_id"], unique=False)
    op.create_table(
        "federation_grant",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("peer_id", sa.UUID(), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("resource_kind", sa.String(length=64), nullable=False),
        sa.Column("remote_subject", sa.String(length=300), nullable=False),
        sa.Column("permission_scopes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "allowlists",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("bearer_secret_ref", sa.String(length=300), nullable=True),
        sa.Column("bearer_hash", sa.String(length=128), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["peer_id"],
            ["federation_peer.id"],
            name=op.f("fk_federation_grant_peer_id_federation_peer"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federation_grant")),
    )
    op.create_index("ix_federation_grant_bearer_hash", "federation_grant", ["bearer_hash"], unique=False)
    op.create_index("ix_federation_grant_peer_id", "federation_grant", ["peer_id"], unique=False)
    op.create_index("ix_federation_grant_resource_kind", "federation_grant", ["resource_kind"], unique=False)
    op.create_index(
        "uq_federation_grant_live",
        "federation_grant",
        ["peer_id", "direction", "resource_kind"],
        unique=True,
        postgresql_where=sa.text("revoked_at IS NULL AND archived_at IS NULL"),
    )
    op.create_table(
        "finding",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("peer_id", sa.UUID(), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.String(length=1000), nullable=False),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["peer_id"],
            ["federation_peer.id"],
            name=op.f("fk_finding_peer_id_federation_peer"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finding")),
    )
    op.create_index("ix_finding_peer_id", "finding", ["peer_id"], unique=False)
    op.create_index(
        "uq_finding_open",
        "finding",
        ["kind", "subject"],
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_table(
        "intervention_policy",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("action_pattern", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=32), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("origin_peer_id", sa.UUID(), nullable=True),
        sa.Column("origin_policy_id", sa.UUID(), nullable=True),
        sa.Column(
            "scope_tags",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("overridden", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["origin_peer_id"],
            ["federation_peer.id"],
            name=op.f("fk_intervention_policy_origin_peer_id_federation_peer"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intervention_policy")),
    )
    op.create_index(
        "ix_intervention_policy_action_pattern", "intervention_policy", ["action_pattern"], unique=False
    )
    op.bulk_insert(node_template, TEMPLATES)


def downgrade() -> None:
    op.drop_index("ix_intervention_policy_action_pattern", table_name="intervention_policy")
    op.drop_table("intervention_policy")
    op.drop_index("uq_finding_open", table_name="finding", postgresql_where=sa.text("resolved_at IS NULL"))
    op.drop_index("ix_finding_peer_id", table_name="finding")
    op.drop_table("finding")
    op.drop_index(
        "uq_federation_grant_live",
        table_name="federation_grant",
        postgresql_where=sa.text("revoked_at IS NULL AND archived_at IS NULL"),
    )
    op.drop_index("ix_federation_grant_resource_kind", table_name="federation_grant")
    op.drop_index("ix_federation_grant_peer_id", table_name="federation_grant")
    op.drop_index("ix_federation_grant_bearer_hash", table_name="federation_grant")
    op.drop_table("federation_grant")
    op.drop_index("ix_acceptance_token_peer_id", table_name="acceptance_token")
    op.drop_table("acceptance_token")
    op.drop_index("ix_federation_peer_spawn_mode", table_name="federation_peer")
    op.drop_index("ix_federation_peer_role_status", table_name="federation_peer")
    op.drop_index("ix_federation_peer_created_at_id", table_name="federation_peer")
    op.drop_index("ix_federation_peer_client_cert_fingerprint", table_name="federation_peer")
    op.drop_table("federation_peer")
    op.drop_table("operator_token")
    op.drop_table("node_template")
    op.drop_index("ix_node_instance_state", table_name="node_instance")
    op.drop_table("node_instance")
    op.drop_index("ix_audit_event_target", table_name="audit_event")
    op.drop_index("ix_audit_event_at", table_name="audit_event")
    op.drop_table("audit_event")

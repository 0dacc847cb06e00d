"""Operator permissions and the roles that bundle them."""

from __future__ import annotations

CHILDREN_READ = "system.children.read"
CHILDREN_SPAWN = "system.children.spawn"
CHILDREN_MANAGE = "system.children.manage"
GRANTS_READ = "system.federation.grants.read"
GRANTS_MANAGE = "system.federation.grants.manage"
FINDINGS_READ = "system.federation.findings.read"
POLICIES_READ = "system.intervention_policies.read"
POLICIES_MANAGE = "system.intervention_policies.manage"
PEERS_MANAGE = "system.federation.peers.manage"
METRICS_READ = "system.metrics.read"
OPERATOR_TOKENS_MANAGE = "system.operator_tokens.manage"

ALL_PERMISSIONS: list[str] = [
    CHILDREN_READ,
    CHILDREN_SPAWN,
    CHILDREN_MANAGE,
    GRANTS_READ,
    GRANTS_MANAGE,
    FINDINGS_READ,
    POLICIES_READ,
    POLICIES_MANAGE,
    PEERS_MANAGE,
    METRICS_READ,
    OPERATOR_TOKENS_MANAGE,
]
VIEWER_PERMISSIONS: list[str] = [CHILDREN_READ, GRANTS_READ, FINDINGS_READ, POLICIES_READ, METRICS_READ]
ROLES: dict[str, list[str]] = {"viewer": VIEWER_PERMISSIONS, "operator": ALL_PERMISSIONS}

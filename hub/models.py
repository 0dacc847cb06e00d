"""Every ORM model, imported in one place so metadata and Alembic see them all."""

from hub.audit.models import AuditEvent
from hub.database import Base
from hub.federation.findings.models import Finding
from hub.federation.grants.models import FederationGrant
from hub.federation.peers.models import AcceptanceToken, FederationPeer
from hub.federation.policies.models import InterventionPolicy
from hub.operators.models import OperatorToken
from hub.outbox.models import OutboxEntry
from hub.provisioning.models import NodeInstance, NodeTemplate

__all__ = [
    "AcceptanceToken",
    "AuditEvent",
    "Base",
    "FederationGrant",
    "FederationPeer",
    "Finding",
    "InterventionPolicy",
    "NodeInstance",
    "NodeTemplate",
    "OperatorToken",
    "OutboxEntry",
]

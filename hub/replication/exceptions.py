"""How replication work fails: a setup step that could not finish, and the delivery answers."""

from __future__ import annotations

from hub.exceptions import Conflict, HubError


class SetupFailed(Exception):
    """A step on the primary or in the secret store failed; `reason` is safe to show and store."""

    def __init__(self, reason: str, *, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient

    def __repr__(self) -> str:
        return f"SetupFailed({self.reason!r}, transient={self.transient})"


class CredentialNotReady(HubError):
    """425: the setup job has not finished; the child agent retries on it."""

    status_code = 425
    code = "NOT_READY"


class AlreadyDelivered(Conflict):
    code = "ALREADY_DELIVERED"


class NotClusterMember(Conflict):
    code = "NOT_CLUSTER_MEMBER"

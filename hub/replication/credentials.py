"""Names, the password and the SQL literals for one cluster_member's slot and role (wire-compat.md)."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub.database import utcnow
from hub.dbroles import quote_ident, quote_literal, scram_verifier

__all__ = ["Credential", "ReplicaNames", "peer_of_slot", "quote_ident", "quote_literal"]

PREFIX = "powernode_repl_"
SECRET_ROOT = "cluster_member_pg_replica"


@dataclass(frozen=True)
class ReplicaNames:
    """Everything named after the peer id, so that a re-run finds what an earlier run made."""

    peer_id: uuid.UUID
    slot: str
    role: str
    secret_path: str

    @classmethod
    def of(cls, peer_id: uuid.UUID) -> ReplicaNames:
        return cls(
            peer_id=peer_id,
            slot=PREFIX + peer_id.hex[:32],
            role=PREFIX + peer_id.hex[:16],
            secret_path=f"{SECRET_ROOT}/{peer_id}",
        )


def peer_of_slot(slot_name: str) -> uuid.UUID | None:
    """The peer a slot of ours was made for; the slot carries the whole id (32 hex digits)."""
    if not slot_name.startswith(PREFIX):
        return None
    try:
        return uuid.UUID(hex=slot_name[len(PREFIX) :])
    except ValueError:
        return None


@dataclass(frozen=True)
class Credential:
    """The replication role's password and its expiry, as kept in the secret store (and only there)."""

    username: str
    password: str = field(repr=False)
    expires_at: datetime
    # The member's Redis ACL user (same name) has its own password, made and rotated with this one.
    redis_password: str = field(repr=False, default="")

    @classmethod
    def new(cls, *, username: str, ttl_days: int) -> Credential:
        return cls(
            username=username,
            password=base64.b64encode(secrets.token_bytes(32)).decode(),
            expires_at=utcnow() + timedelta(days=ttl_days),
            redis_password=secrets.token_urlsafe(32),
        )

    @classmethod
    def from_secret(cls, data: dict[str, Any] | None) -> Credential | None:
        if not data or not data.get("password") or not data.get("expires_at"):
            return None
        if not data.get("redis_password"):
            return None  # made before members had their own Redis user: make a new one
        return cls(
            username=str(data.get("username", "")),
            password=str(data["password"]),
            expires_at=datetime.fromisoformat(str(data["expires_at"])),
            redis_password=str(data["redis_password"]),
        )

    def to_secret(self) -> dict[str, str]:
        return {
            "username": self.username,
            "password": self.password,
            "expires_at": self.expires_at.isoformat(),
            "redis_password": self.redis_password,
        }

    def expired(self) -> bool:
        return self.expires_at <= utcnow()

    def scram_verifier(self, *, salt: bytes | None = None) -> str:
        """The SCRAM-SHA-256 verifier PostgreSQL stores: the plaintext never reaches the server."""
        return scram_verifier(self.password, salt=salt)

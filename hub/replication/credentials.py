"""Names, the password and the SQL literals for one cluster_member's slot and role (wire-compat.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub.database import utcnow

PREFIX = "powernode_repl_"
SECRET_ROOT = "cluster_member_pg_replica"
SCRAM_ITERATIONS = 4096


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

    @classmethod
    def new(cls, *, username: str, ttl_days: int) -> Credential:
        password = base64.b64encode(secrets.token_bytes(32)).decode()
        return cls(username=username, password=password, expires_at=utcnow() + timedelta(days=ttl_days))

    @classmethod
    def from_secret(cls, data: dict[str, Any] | None) -> Credential | None:
        if not data or not data.get("password") or not data.get("expires_at"):
            return None
        return cls(
            username=str(data.get("username", "")),
            password=str(data["password"]),
            expires_at=datetime.fromisoformat(str(data["expires_at"])),
        )

    def to_secret(self) -> dict[str, str]:
        return {
            "username": self.username,
            "password": self.password,
            "expires_at": self.expires_at.isoformat(),
        }

    def expired(self) -> bool:
        return self.expires_at <= utcnow()

    def scram_verifier(self, *, salt: bytes | None = None) -> str:
        """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677), computed here so that the
        plaintext never reaches the server: not its statement log, pg_stat_activity or an error."""
        salt = salt or secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, SCRAM_ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string literal for DDL, which takes no bind parameters. Backslashes are refused rather than
    escaped: their meaning depends on the server's standard_conforming_strings."""
    if "\x00" in value or "\\" in value:
        raise ValueError("refusing a SQL literal with NUL or a backslash")
    return "'" + value.replace("'", "''") + "'"

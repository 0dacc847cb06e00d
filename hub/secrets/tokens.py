"""Bearer secrets with a scanner-matchable prefix: `<prefix>_<public id>_<secret>`, stored as a hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

ACCEPTANCE_TOKEN_PREFIX = "pnat"
OPERATOR_TOKEN_PREFIX = "pnop"
GRANT_BEARER_PREFIX = "pngb"
_PUBLIC_ID_BYTES = 9  # 12 url-safe characters: unique lookup key, not a secret
_SECRET_BYTES = 32  # 256-bit secret (≥128 required)


@dataclass(frozen=True)
class IssuedToken:
    """A freshly minted token: `plaintext` is shown once and never stored."""

    public_id: str
    plaintext: str
    secret_hash: str

    def __repr__(self) -> str:
        return f"IssuedToken(public_id={self.public_id!r})"


def hash_secret(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def issue(prefix: str) -> IssuedToken:
    public_id = secrets.token_urlsafe(_PUBLIC_ID_BYTES).replace("_", "x").replace("-", "y")
    plaintext = f"{prefix}_{public_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return IssuedToken(public_id=public_id, plaintext=plaintext, secret_hash=hash_secret(plaintext))


def public_id_of(prefix: str, plaintext: str) -> str | None:
    """The public id part of a well-formed token, else None (malformed input is not an error)."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or len(parts[2]) < 22:
        return None
    return parts[1]

"""The common accept in two round trips on dedicated connections (DESIGN §8: accept is a hot path).

A first accept of a fresh token is: look the token and its proposed peer up (a read, no lock),
do the cryptography (sign the CSR for that peer) and fetch the prepared bearer with no lock held,
then one autocommitted statement that consumes the token, moves the peer to accepted with its
certificate, inserts the held grant and the audit event, or does none of it. That statement is
the single-use guarantee: of racing accepts, the one UPDATE that flips `consumed_at` wins, and
every part of the accept hangs on its RETURNING, so a loser writes nothing. Whatever this path
does not cover (a used, unknown or expired token, a retry, a cluster_member, a lost race) gets
None here and goes the general way in service.py, in one SQLAlchemy transaction.

The connections are accept's own (hub/hotpath.py).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from hub import hotpath

EXTRAS_KEY = "accepts"

_LOOKUP = """
    SELECT t.peer_id, p.spawn_mode, p.spawn_role, p.peer_kind,
           p.metadata -> 'spawn' ->> 'held_grant_id' AS held_grant_id
    FROM acceptance_token AS t JOIN federation_peer AS p ON p.id = t.peer_id
    WHERE t.public_id = $1 AND t.secret_hash = $2 AND t.consumed_at IS NULL
      AND t.superseded_at IS NULL AND t.expires_at > now() AND p.status = 'proposed'
"""

# $1 public_id, $2 secret_hash, $3 peer_id, $4 key fingerprint (consumed_by), $5 contract version,
# $6 endpoints, $7 capabilities, $8 extension_slugs (JSON text), $9 remote_platform_id,
# $10 remote_url, $11 certificate fingerprint, $12 serial, $13 certificate PEM (all NULL without a
# CSR), $14 grant id (NULL: no held grant), $15 grant subject, $16 bearer_secret_ref,
# $17 grant metadata (JSON text), $18 grant TTL days, $19 audit details (JSON text).
_CONSUME_ACCEPT_SIGN_GRANT_AUDIT = """
    WITH consumed AS (
        UPDATE acceptance_token SET consumed_at = now(), consumed_by = $4
        WHERE public_id = $1 AND secret_hash = $2 AND peer_id = $3 AND consumed_at IS NULL
          AND superseded_at IS NULL AND expires_at > now()
        RETURNING peer_id
    ), accepted AS (
        UPDATE federation_peer AS p SET
            status = 'accepted', accepted_at = now(), updated_at = now(), contract_version = $5,
            endpoints = $6::jsonb, capabilities = $7::jsonb, extension_slugs = $8::jsonb,
            remote_platform_id = coalesce($9, p.remote_platform_id),
            remote_url = coalesce($10, p.remote_url),
            client_cert_fingerprint = coalesce($11, p.client_cert_fingerprint),
            client_cert_serial = coalesce($12, p.client_cert_serial),
            signed_at = CASE WHEN $11::text IS NULL THEN coalesce(p.signed_at, now()) ELSE now() END,
            metadata = CASE WHEN $13::text IS NULL THEN p.metadata
                            ELSE coalesce(p.metadata, '{}'::jsonb)
                                 || jsonb_build_object('accept_certificate', $13::text) END
        FROM consumed
        WHERE p.id = consumed.peer_id AND p.status = 'proposed'
        RETURNING p.id, p.status, p.contract_version, p.accepted_at
    ), granted AS (
        INSERT INTO federation_grant (id, peer_id, direction, resource_kind, remote_subject,
            permission_scopes, allowlists, bearer_secret_ref, metadata, created_at, expires_at)
        SELECT $14, a.id, 'held', 'managed_child_operator', $15, '["read", "write", "admin"]'::jsonb,
            '{}'::jsonb, $16, $17::jsonb, now(), now() + make_interval(days => $18)
        FROM accepted AS a WHERE $14::uuid IS NOT NULL
        RETURNING expires_at
    ), audited AS (
        INSERT INTO audit_event (actor, action, target, outcome, details)
        SELECT 'peer:' || a.id, 'child.accept', a.id::text, 'success', $19::jsonb FROM accepted AS a
    )
    SELECT a.status, a.contract_version, a.accepted_at, (SELECT expires_at FROM granted) AS grant_expires_at
    FROM accepted AS a
"""


@dataclass(frozen=True)
class Proposed:
    """What the lookup found: a consumable token whose peer may be accepted."""

    peer_id: uuid.UUID
    spawn_mode: str
    spawn_role: str
    peer_kind: str
    held_grant_id: uuid.UUID | None


class AcceptConnections(hotpath.Connections):
    """Accept's own connections (hub/hotpath.py) and its two statements."""

    async def lookup(self, public_id: str, secret_hash: str) -> Proposed | None:
        async with self.connection() as connection:
            row = await connection.fetchrow(_LOOKUP, public_id, secret_hash)
        if row is None:
            return None
        held = row["held_grant_id"]
        return Proposed(
            peer_id=row["peer_id"],
            spawn_mode=row["spawn_mode"],
            spawn_role=row["spawn_role"],
            peer_kind=row["peer_kind"],
            held_grant_id=uuid.UUID(held) if held else None,
        )

    async def commit(self, *args: Any) -> asyncpg.Record | None:
        """The one statement (see _CONSUME_ACCEPT_SIGN_GRANT_AUDIT); None if the token was taken."""
        async with self.connection() as connection:
            return await connection.fetchrow(_CONSUME_ACCEPT_SIGN_GRANT_AUDIT, *args)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

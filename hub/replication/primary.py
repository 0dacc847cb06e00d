"""The SQL replication work runs on the PostgreSQL primary that holds this hub's own database."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
import redis.exceptions
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from hub import dbroles
from hub.config import Settings
from hub.replication.credentials import PREFIX, Credential, ReplicaNames
from hub.replication.exceptions import SetupFailed
from hub.secrets.store import SecretStoreUnavailable

# Lost connections, shutdowns, lock and serialization conflicts, a busy server, a slot still held by a
# walsender that is exiting: another try may well succeed. Anything else needs an operator.
_TRANSIENT_CLASSES = ("08", "40", "57")
_TRANSIENT_STATES = frozenset({"53000", "53100", "53200", "53300", "55006", "55P03"})
_HBA_HOST = re.compile(r'from host "([^"]+)"')
CHECK_TIMEOUT = 10.0
TERMINATE_WAIT_MS = 5000


@dataclass(frozen=True)
class PrimaryEndpoint:
    """Where the hub reaches the primary (its DATABASE_URL) and what members are told to use."""

    host: str
    port: int
    ssl: str | None
    advertised_host: str
    advertised_port: int
    database: str = "postgres"

    @classmethod
    def of(cls, settings: Settings) -> PrimaryEndpoint:
        url = make_url(settings.database_url())
        host, port = url.host or "localhost", url.port or 5432
        ssl = url.query.get("ssl") or url.query.get("sslmode")
        return cls(
            host=host,
            port=port,
            ssl=ssl if isinstance(ssl, str) else None,
            advertised_host=settings.replication.primary_host or host,
            advertised_port=settings.replication.primary_port or port,
            database=url.database or "postgres",
        )


def _postgres_error(error: BaseException) -> tuple[str | None, str]:
    """(SQLSTATE, the server's message) without the statement text SQLAlchemy adds to its errors."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        cause = error.orig.__cause__
        if isinstance(cause, asyncpg.PostgresError):
            error = cause
        else:
            return getattr(error.orig, "sqlstate", None), type(error.orig).__name__
    if isinstance(error, asyncpg.PostgresError):
        return error.sqlstate, str(error.args[0]) if error.args else type(error).__name__
    return None, str(error) if isinstance(error, SecretStoreUnavailable) else type(error).__name__


@contextmanager
def step(name: str) -> Iterator[None]:
    """Turn what a step raises into a SetupFailed that names the step and says whether to retry."""
    try:
        yield
    except (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        sqlstate, message = _postgres_error(e)
        transient = sqlstate is None or sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_STATES
        suffix = f" (SQLSTATE {sqlstate})" if sqlstate else ""
        raise SetupFailed(f"{name} failed: {message}{suffix}", transient=transient) from None
    except (SecretStoreUnavailable, OSError, TimeoutError) as e:
        raise SetupFailed(f"{name} failed: {_postgres_error(e)[1]}", transient=True) from None
    except redis.exceptions.NoPermissionError:
        raise SetupFailed(
            f"{name} failed: this hub's Redis user may not manage ACL users "
            "(it needs +acl|setuser +acl|deluser +acl|save; see the README)",
            transient=False,
        ) from None
    except redis.exceptions.ResponseError as e:
        raise SetupFailed(f"{name} failed: Redis answered {type(e).__name__}", transient=False) from None
    except redis.exceptions.RedisError as e:
        raise SetupFailed(f"{name} failed: {type(e).__name__}", transient=True) from None


async def lock(session: AsyncSession, *, peer_id: uuid.UUID) -> None:
    """Serialise every run for one peer (setup, rotation, teardown) until this transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"{PREFIX}{peer_id}"}
    )


async def ensure_slot(session: AsyncSession, *, name: str) -> bool:
    """The physical slot, WAL reserved from now on; False when an earlier run already made it."""
    created = await session.scalar(
        text(f"SELECT {dbroles.ADMIN_SCHEMA}.create_member_slot(:name)"), {"name": name}
    )
    return bool(created)


async def ensure_role(session: AsyncSession, *, credential: Credential) -> None:
    """The member's LOGIN REPLICATION role at this credential, and DML on the hub's tables.

    Through the replication admin's functions (the hub's owner role may not create roles); only
    the SCRAM verifier is sent, as a bind parameter, so the password reaches no server log.
    """
    await session.execute(
        text(f"SELECT {dbroles.ADMIN_SCHEMA}.ensure_member_role(:name, :verifier, :valid_until)"),
        {
            "name": credential.username,
            "verifier": credential.scram_verifier(),
            "valid_until": credential.expires_at,
        },
    )
    await _grant_platform_access(session, role=credential.username)


def member_tables() -> list[str]:
    """The tables a member's hub reads and writes: every table of the hub's schema, by name."""
    from hub import models

    return [*models.Base.metadata.tables, *dbroles.READ_ONLY_TABLES]


async def _lock_grants(session: AsyncSession) -> None:
    """GRANT/REVOKE on one table rewrite its ACL row: two members' runs at once would collide."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"{PREFIX}grants"}
    )


async def _grant_platform_access(session: AsyncSession, *, role: str) -> None:
    """A member's hub writes to this primary with the same credential: DML on the named tables
    (it is a node of the same platform), never ownership, DDL or the owner role's membership."""
    await _lock_grants(session)
    for statement in dbroles.member_grants(role, member_tables()):
        await session.execute(text(statement))


async def drop(session: AsyncSession, *, names: ReplicaNames) -> None:
    """Take back its grants, end the role's sessions and the slot's walsender, drop slot and role."""
    if await session.scalar(text("SELECT true FROM pg_roles WHERE rolname = :name"), {"name": names.role}):
        await _lock_grants(session)
        owned = (await session.execute(text(dbroles.OWNED_TABLES))).scalars().all()
        for statement in dbroles.member_revokes(names.role, owned):
            await session.execute(text(statement))
    await session.execute(
        text(f"SELECT {dbroles.ADMIN_SCHEMA}.drop_member(:role, :slot, :wait)"),
        {"role": names.role, "slot": names.slot, "wait": TERMINATE_WAIT_MS},
    )


def _prefix_length(address: str) -> int:
    try:
        return 128 if ipaddress.ip_address(address).version == 6 else 32
    except ValueError:
        return 32


def _hba_failure(credential: Credential, endpoint: PrimaryEndpoint, message: str) -> SetupFailed:
    match = _HBA_HOST.search(message)
    address = match.group(1) if match else "<hub address>"
    width = _prefix_length(address)
    return SetupFailed(
        f"pg_hba.conf has no replication line for {credential.username} from {address} on "
        f"{endpoint.host}:{endpoint.port}; add: host replication {credential.username} "
        f"{address}/{width} scram-sha-256 (and one for the member's address), reload PostgreSQL, "
        "then retry",
        transient=False,
    )


async def check_replication_login(endpoint: PrimaryEndpoint, credential: Credential) -> None:
    """Log in as the member will: a walsender connection (replication=true) and IDENTIFY_SYSTEM.

    This exercises pg_hba.conf's `replication` lines, SCRAM with the new password, the role's
    REPLICATION attribute and max_wal_senders, from the hub's address.
    """
    try:
        connection = await asyncpg.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=credential.username,
            password=credential.password,
            database="replication",
            ssl=endpoint.ssl,
            timeout=CHECK_TIMEOUT,
            server_settings={"replication": "true"},
        )
    except asyncpg.InvalidAuthorizationSpecificationError as e:
        if "pg_hba.conf" not in str(e):
            raise
        raise _hba_failure(credential, endpoint, str(e)) from None
    try:
        # A walsender speaks only the simple query protocol: execute() without arguments uses it.
        await connection.execute("IDENTIFY_SYSTEM")
    finally:
        await connection.close()


@dataclass(frozen=True)
class SlotState:
    name: str
    active: bool
    wal_status: str | None
    restart_lsn: str | None
    retained_bytes: int | None


async def our_slots(session: AsyncSession) -> list[SlotState] | None:
    """Our physical slots and the WAL each holds back; None on a standby (no WAL position to compare)."""
    if await session.scalar(text("SELECT pg_is_in_recovery()")):
        return None
    rows = await session.execute(
        text(
            "SELECT slot_name, active, wal_status, restart_lsn::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_type = 'physical' AND starts_with(slot_name, :prefix) "
            "ORDER BY slot_name"
        ),
        {"prefix": PREFIX},
    )
    return [SlotState(*row) for row in rows]

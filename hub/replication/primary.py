"""The SQL replication work runs on the PostgreSQL primary that holds this hub's own database."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.replication.credentials import PREFIX, Credential, ReplicaNames, quote_ident, quote_literal
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


async def lock(session: AsyncSession, *, peer_id: uuid.UUID) -> None:
    """Serialise every run for one peer (setup, rotation, teardown) until this transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"{PREFIX}{peer_id}"}
    )


async def ensure_slot(session: AsyncSession, *, name: str) -> bool:
    """The physical slot, WAL reserved from now on; False when an earlier run already made it."""
    exists = await session.scalar(
        text("SELECT true FROM pg_replication_slots WHERE slot_name = :name"), {"name": name}
    )
    if exists:
        return False
    await session.execute(text("SELECT pg_create_physical_replication_slot(:name, true)"), {"name": name})
    return True


async def ensure_role(session: AsyncSession, *, credential: Credential) -> None:
    """Create or alter the LOGIN REPLICATION role to this credential, in the session's transaction."""
    exists = await session.scalar(
        text("SELECT true FROM pg_roles WHERE rolname = :name"), {"name": credential.username}
    )
    statement = (
        f"{'ALTER' if exists else 'CREATE'} ROLE {quote_ident(credential.username)} "
        f"WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"PASSWORD {quote_literal(credential.scram_verifier())} "
        f"VALID UNTIL {quote_literal(credential.expires_at.isoformat())}"
    )
    # DDL takes no bind parameters, and SQLAlchemy's engine logger prints statements at INFO: run
    # this one on the driver connection (same transaction), where nothing logs it.
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None:
        raise RuntimeError("the database connection was closed under the role statement")
    await driver.execute(statement)
    await _grant_platform_access(session, role=credential.username)


async def _grant_platform_access(session: AsyncSession, *, role: str) -> None:
    """A member's hub writes to this primary with the same credential: it inherits the hub
    owner's table privileges, but may not SET ROLE to it (PostgreSQL 16+; older servers grant
    plain membership, documented in the README)."""
    owner = await session.scalar(text("SELECT current_user"))
    version = int(await session.scalar(text("SHOW server_version_num")) or 0)
    options = " WITH INHERIT TRUE, SET FALSE" if version >= 160000 else ""
    await session.execute(text(f"GRANT {quote_ident(str(owner))} TO {quote_ident(role)}{options}"))


async def drop(session: AsyncSession, *, names: ReplicaNames) -> None:
    """End the role's sessions and the slot's walsender, then drop the slot and the role."""
    await session.execute(
        text(
            "SELECT pg_terminate_backend(pid, :wait) FROM pg_stat_activity WHERE usename = :role "
            "UNION ALL SELECT pg_terminate_backend(active_pid, :wait) FROM pg_replication_slots "
            "WHERE slot_name = :slot AND active_pid IS NOT NULL"
        ),
        {"role": names.role, "slot": names.slot, "wait": TERMINATE_WAIT_MS},
    )
    await session.execute(
        text("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = :slot"),
        {"slot": names.slot},
    )
    await session.execute(text(f"DROP ROLE IF EXISTS {quote_ident(names.role)}"))


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

"""Who owns the hub's database, and the narrow door through which the hub manages replication roles.

The bootstrap superuser is used only here: to create the owner role, the database, the replication
admin role and its functions. The hub itself runs as the owner role, which is no superuser and may
not create roles, databases or replication slots. What cluster_member replication needs beyond that
(a LOGIN REPLICATION role per member, its slot, ending its sessions, dropping both) goes through
SECURITY DEFINER functions in the `powernode_admin` schema, owned by `powernode_replication_admin`
(NOLOGIN, CREATEROLE, REPLICATION, pg_signal_backend; PostgreSQL 16+ limits a CREATEROLE role to the
roles it created). The functions act only on names with our prefix; the owner may only EXECUTE them.

A member's role gets DML on the named hub tables (`member_grants`), nothing else: no DDL, no
ownership, no membership in the owner role, no TEMP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

OWNER = "powernode_hub"
ADMIN_ROLE = "powernode_replication_admin"
ADMIN_SCHEMA = "powernode_admin"
MEMBER_PREFIX = "powernode_repl_"
_ROLE_PATTERN = "^powernode_repl_[0-9a-f]{16}$"
_SLOT_PATTERN = "^powernode_repl_[0-9a-f]{32}$"
SCRAM_ITERATIONS = 4096
# Read by a member's hub at start (is the schema at head?); never written by it.
READ_ONLY_TABLES = ("alembic_version",)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string literal for DDL, which takes no bind parameters. Backslashes are refused rather than
    escaped: their meaning depends on the server's standard_conforming_strings."""
    if "\x00" in value or "\\" in value:
        raise ValueError("refusing a SQL literal with NUL or a backslash")
    return "'" + value.replace("'", "''") + "'"


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677), computed here so that the
    plaintext never reaches the server: not its statement log, pg_stat_activity or an error."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def cluster_statements(*, owner: str, owner_password: str) -> list[str]:
    """Run once per cluster as a superuser (in any database): the owner and the admin role."""
    verifier = quote_literal(scram_verifier(owner_password))
    o, a = quote_ident(owner), quote_ident(ADMIN_ROLE)
    return [
        _create_role_if_missing(owner, "LOGIN"),
        f"ALTER ROLE {o} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
        f"PASSWORD {verifier}",
        _create_role_if_missing(ADMIN_ROLE, "NOLOGIN"),
        f"ALTER ROLE {a} WITH NOLOGIN NOSUPERUSER NOCREATEDB CREATEROLE REPLICATION NOBYPASSRLS",
        f"GRANT pg_signal_backend TO {a}",
    ]


def database_statements(*, database: str, owner: str) -> list[str]:
    """Run as a superuser in `database` (already created with OWNER owner): schema, functions, grants."""
    o, a, s, d = quote_ident(owner), quote_ident(ADMIN_ROLE), quote_ident(ADMIN_SCHEMA), quote_ident(database)
    return [
        f"ALTER DATABASE {d} OWNER TO {o}",
        # No temporary tables for everyone (a member's role included); the owner keeps TEMP.
        f"REVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC",
        f"GRANT TEMPORARY ON DATABASE {d} TO {o}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        _reown_public_objects(owner),
        f"CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {a}",
        f"ALTER SCHEMA {s} OWNER TO {a}",
        f"REVOKE ALL ON SCHEMA {s} FROM PUBLIC",
        *_functions(),
        *(f"ALTER FUNCTION {s}.{signature} OWNER TO {a}" for signature in _SIGNATURES),
        *(f"REVOKE ALL ON FUNCTION {s}.{signature} FROM PUBLIC" for signature in _SIGNATURES),
        f"GRANT USAGE ON SCHEMA {s} TO {o}",
        _adopt_member_roles(owner),
        *(f"GRANT EXECUTE ON FUNCTION {s}.{signature} TO {o}" for signature in _SIGNATURES),
    ]


def member_grants(role: str, tables: Iterable[str]) -> list[str]:
    """DML on each named table (SELECT only on the read-only ones), run by the owner."""
    r = quote_ident(role)
    statements = []
    for table in sorted(tables):
        privileges = "SELECT" if table in READ_ONLY_TABLES else "SELECT, INSERT, UPDATE, DELETE"
        statements.append(f"GRANT {privileges} ON TABLE public.{quote_ident(table)} TO {r}")
    return statements


def member_revokes(role: str, tables: Iterable[str]) -> list[str]:
    """What the owner granted on its `tables`, taken back (a role holding privileges cannot be
    dropped); tables someone else owns were never granted by the owner and are left alone."""
    r = quote_ident(role)
    return [f"REVOKE ALL ON TABLE public.{quote_ident(table)} FROM {r}" for table in sorted(tables)]


OWNED_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
    "AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
)


_SIGNATURES = (
    "ensure_member_role(text, text, timestamptz)",
    "create_member_slot(text)",
    "drop_member(text, text, bigint)",
)


def _functions() -> list[str]:
    s = quote_ident(ADMIN_SCHEMA)
    # search_path pinned: a SECURITY DEFINER function must not resolve names through the caller's.
    header = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$"
    return [
        f"""CREATE OR REPLACE FUNCTION {s}.ensure_member_role(
  name text, verifier text, valid_until timestamptz
) RETURNS void {header}
BEGIN
  IF name !~ '{_ROLE_PATTERN}' THEN RAISE EXCEPTION 'not a member role name: %', name; END IF;
  IF verifier !~ '^SCRAM-SHA-256\\$' THEN RAISE EXCEPTION 'only a SCRAM verifier is accepted'; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
    -- Created NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS, member of nothing.
    EXECUTE format('CREATE ROLE %I', name);
  END IF;
  EXECUTE format(
    'ALTER ROLE %I WITH LOGIN REPLICATION PASSWORD %L VALID UNTIL %L', name, verifier, valid_until);
END $fn$""",
        f"""CREATE OR REPLACE FUNCTION {s}.create_member_slot(slot text)
RETURNS boolean {header}
BEGIN
  IF slot !~ '{_SLOT_PATTERN}' THEN RAISE EXCEPTION 'not a member slot name: %', slot; END IF;
  IF EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = slot) THEN RETURN false; END IF;
  PERFORM pg_create_physical_replication_slot(slot, true);
  RETURN true;
END $fn$""",
        f"""CREATE OR REPLACE FUNCTION {s}.drop_member(name text, slot text, wait_ms bigint)
RETURNS void {header}
BEGIN
  IF name !~ '{_ROLE_PATTERN}' THEN RAISE EXCEPTION 'not a member role name: %', name; END IF;
  IF slot !~ '{_SLOT_PATTERN}' THEN RAISE EXCEPTION 'not a member slot name: %', slot; END IF;
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
    EXECUTE format('ALTER ROLE %I WITH NOLOGIN', name);
  END IF;
  PERFORM pg_terminate_backend(pid, wait_ms) FROM pg_stat_activity WHERE usename = name;
  PERFORM pg_terminate_backend(active_pid, wait_ms) FROM pg_replication_slots
    WHERE slot_name = slot AND active_pid IS NOT NULL;
  PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = slot;
  EXECUTE format('DROP ROLE IF EXISTS %I', name);
END $fn$""",  # noqa: S608 - fixed names and patterns, no input
    ]


def _create_role_if_missing(name: str, options: str) -> str:
    return (
        f"DO $do$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote_literal(name)}) "
        f"THEN CREATE ROLE {quote_ident(name)} {options}; END IF; END$do$"
    )


def _adopt_member_roles(owner: str) -> str:
    """Member roles made before the admin role existed (by a superuser, members of the owner role):
    the admin role may manage them, and they lose the owner role's privileges."""
    return f"""DO $do$DECLARE r record; BEGIN
  FOR r IN SELECT rolname FROM pg_roles WHERE rolname ~ '{_ROLE_PATTERN}' LOOP
    EXECUTE format('GRANT %I TO %I WITH ADMIN OPTION', r.rolname, {quote_literal(ADMIN_ROLE)});
    IF pg_has_role(r.rolname, {quote_literal(owner)}, 'MEMBER') THEN
      EXECUTE format('REVOKE %I FROM %I', {quote_literal(owner)}, r.rolname);
    END IF;
  END LOOP;
END$do$"""  # noqa: S608 - quoted by quote_literal


def _reown_public_objects(owner: str) -> str:
    """A data dir made before the owner role existed: its tables, sequences and types change hands."""
    o = quote_literal(owner)
    return f"""DO $do$DECLARE r record; BEGIN
  FOR r IN SELECT c.oid::regclass AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
      AND pg_get_userbyid(c.relowner) <> {o}
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP EXECUTE format('ALTER TABLE %s OWNER TO %I', r.name, {o}); END LOOP;
  FOR r IN SELECT t.oid::regtype AS name FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND pg_get_userbyid(t.typowner) <> {o}
      AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  LOOP EXECUTE format('ALTER TYPE %s OWNER TO %I', r.name, {o}); END LOOP;
END$do$"""  # noqa: S608 - quoted by quote_literal


async def bootstrap(superuser_url: str, hub_url: str) -> str:
    """`powernode-hub bootstrap-database`: as the superuser of `superuser_url`, make the owner role
    (user and password of `hub_url`), its database and the admin role and functions. Idempotent."""
    import asyncpg

    hub = urlsplit(hub_url)
    owner, password = unquote(hub.username or ""), unquote(hub.password or "")
    database = unquote(hub.path.lstrip("/"))
    if not owner or not password or not database:
        raise ValueError("DATABASE_URL must name the hub's user, its password and the database")
    admin = urlsplit(superuser_url)._replace(scheme="postgresql")
    connection = await asyncpg.connect(urlunsplit(admin))
    try:
        for statement in cluster_statements(owner=owner, owner_password=password):
            await connection.execute(statement)
        if not await connection.fetchval("SELECT true FROM pg_database WHERE datname = $1", database):
            await connection.execute(f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(owner)}")
    finally:
        await connection.close()
    connection = await asyncpg.connect(urlunsplit(admin._replace(path=f"/{quote(database, safe='')}")))
    try:
        for statement in database_statements(database=database, owner=owner):
            await connection.execute(statement)
    finally:
        await connection.close()
    return database

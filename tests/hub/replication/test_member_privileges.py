"""Issue 11 item 3: a member's database role, and the hub's own, are no superuser.

The attack is mounted for real: the member's role logs in to the hub's database on the primary with
the credential it was delivered and tries what a compromised member would. (Its REPLICATION
attribute, which streaming needs, also lets it manage replication slots: PostgreSQL has nothing
finer. The README's trust model says so.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest

from hub import dbroles
from tests.hub.replication.conftest import CHILDREN, read_secret, roles_named

ATTACKS = [
    "CREATE TABLE stolen (x int)",
    "CREATE TEMP TABLE stolen (x int)",
    "ALTER TABLE federation_peer ADD COLUMN backdoor text",
    "DROP TABLE finding",
    "TRUNCATE audit_event",
    "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "SELECT rolpassword FROM pg_authid",
    "SELECT pg_read_file('postgresql.conf')",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pn-member-pwned'",
    "COPY federation_peer FROM '/etc/passwd'",
    f"SET ROLE {dbroles.OWNER}",
    "SET ROLE postgres",
    "CREATE ROLE intruder LOGIN",
    f"GRANT {dbroles.OWNER} TO CURRENT_USER",
    f"SELECT {dbroles.ADMIN_SCHEMA}.drop_member('powernode_repl_0000000000000000', "
    f"'powernode_repl_{'0' * 32}', 0)",
    "ALTER SYSTEM SET wal_level = minimal",
]


async def _member_connection(database_url: str, role: str, password: str) -> asyncpg.Connection:
    parts = urlsplit(database_url)
    return await asyncpg.connect(
        host=parts.hostname,
        port=parts.port,
        user=role,
        password=password,
        database=parts.path.lstrip("/"),
    )


async def test_the_hub_runs_as_an_owner_without_superuser_or_role_creation(runtime):
    async with runtime.engine.connect() as connection:
        row = (
            await connection.exec_driver_sql(
                "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                "FROM pg_roles WHERE rolname = current_user"
            )
        ).one()
    assert tuple(row) == (dbroles.OWNER, False, False, False, False, False)


async def test_a_member_role_gets_dml_on_the_hub_tables_and_nothing_more(
    spawn, run_jobs, database_url, vault, tmp_path
):
    child = await spawn()
    await run_jobs()
    secret = read_secret(vault, child.names)
    member = await _member_connection(database_url, child.names.role, secret["password"])
    try:
        # What its hub needs: read and write the platform's rows.
        assert await member.fetchval("SELECT count(*) FROM federation_peer WHERE id = $1", child.id) == 1
        await member.execute("UPDATE federation_peer SET name = name WHERE id = $1", child.id)
        refused = {}
        for attack in ATTACKS:
            try:
                await member.execute(attack)
            except asyncpg.PostgresError as e:
                refused[attack] = e.sqlstate
            else:
                refused[attack] = "ALLOWED"
        attributes = await member.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
        memberships = await member.fetchval(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "WHERE r.rolname = current_user"
        )
    finally:
        await member.close()

    # 42501 permission denied, 42P01 no such relation (pg_authid is not even visible as a table to
    # read), 22023/42704 for SET ROLE to a role it may not use.
    allowed = [attack for attack, state in refused.items() if state == "ALLOWED"]
    assert not allowed
    assert set(refused.values()) <= {"42501", "22023", "42704", "0LP01"}, refused
    assert tuple(attributes) == (False, False, False, False)
    assert memberships == 0
    assert not (tmp_path / "pn-member-pwned").exists()


async def test_revoke_ends_the_member_sessions_and_drops_its_role(
    spawn, run_jobs, client, operator, database_url, primary, vault
):
    child = await spawn()
    await run_jobs()
    password = read_secret(vault, child.names)["password"]
    member = await _member_connection(database_url, child.names.role, password)
    assert await member.fetchval("SELECT 1") == 1

    revoked = await client.post(f"{CHILDREN}/{child.id}/revoke", headers=operator, json={"reason": "gone"})
    ran = await run_jobs()

    assert revoked.status_code == 200 and ran.failed == 0
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await member.fetchval("SELECT 1")  # its open session was terminated
    await member.close()
    assert await roles_named(primary, child.names.role) == 0
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await _member_connection(database_url, child.names.role, password)

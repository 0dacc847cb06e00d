"""`powernode-hub bootstrap-database`: the superuser makes the hub's owner role and database once."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from hub import dbroles


def _as(url: str, user: str, password: str, database: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}", path=f"/{database}"))


async def test_bootstrap_makes_an_owner_without_superuser_and_is_idempotent(databases, tmp_path):
    superuser_url = databases.superuser_url("postgres")
    name = databases.new_name("boot")
    hub_url = _as(superuser_url, f"pn_owner_{os.getpid()}", "owner-Pw-7c1d9e", name)
    env = {
        **os.environ,
        "DATABASE_URL": hub_url,
        "REDIS_URL": "redis://:x@127.0.0.1:1/0",
        "POWERNODE_BOOTSTRAP_SUPERUSER_URL": superuser_url,
        "POWERNODE_DATA_DIR": str(tmp_path),
    }
    try:
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-m", "hub.cli", "bootstrap-database"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            assert "owner-Pw-7c1d9e" not in done.stdout + done.stderr
        connection = await asyncpg.connect(hub_url)
        try:
            row = await connection.fetchrow(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
                "(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()) "
                "FROM pg_roles WHERE rolname = current_user"
            )
            functions = await connection.fetchval(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = $1::regnamespace", dbroles.ADMIN_SCHEMA
            )
            await connection.execute("CREATE TABLE mine (x int)")  # the owner does run migrations
        finally:
            await connection.close()
        assert tuple(row) == (False, False, False, False, f"pn_owner_{os.getpid()}")
        assert functions == 3
    finally:
        await databases.drop(name)
        admin = await asyncpg.connect(superuser_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "pn_owner_{os.getpid()}"')
        finally:
            await admin.close()

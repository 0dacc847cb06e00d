"""The operator CLI as operators run it: the real `powernode-hub` console script in a subprocess,
against a hub serving on a real port (POWERNODE_URL / POWERNODE_TOKEN)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import update

from hub.database import utcnow
from hub.federation.findings.jobs import federation_findings_sweep
from hub.federation.peers.models import AcceptanceToken
from hub.hotpath import asyncpg_dsn
from tests.harness.listeners import api_listener
from tests.hub.helpers import ACCEPT, CHILDREN, operator_headers, spawn

HUB = str(Path(sys.executable).with_name("powernode-hub"))
TOKEN = re.compile(r"pnat_\S+")


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


@pytest.fixture
async def hub_url(settings, runtime):
    async with api_listener(settings, runtime) as url:
        yield url


@pytest.fixture
async def operator(runtime) -> str:
    return (await operator_headers(runtime))["Authorization"].split(" ", 1)[1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The CLI's working directory and HOME: whatever it wrote would be here."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(home: Path, hub_url: str, operator: str):
    async def run(*args: str, token: str | None = None, env: dict[str, str] | None = None) -> Done:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POWERNODE_", "DATABASE_", "REDIS_", "VAULT_"))
        }
        clean |= {"HOME": str(home), "POWERNODE_URL": hub_url, "POWERNODE_TOKEN": token or operator}
        process = await asyncio.create_subprocess_exec(
            HUB,
            *args,
            cwd=home,
            env=clean | (env or {}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(120):
            out, err = await process.communicate()
        return Done(process.returncode or 0, out.decode(), err.decode())

    return run


async def database_text(database_url: str) -> str:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        dumped = []
        for table in tables:
            rows = await connection.fetch(f'SELECT * FROM "{table["tablename"]}"')
            dumped.append(f"{table['tablename']}: {[dict(r) for r in rows]!r}")
        return "\n".join(dumped)
    finally:
        await connection.close()


def files_text(directory: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())


async def test_spawn_prints_the_token_once_and_stores_it_nowhere(cli, client, database_url, home):
    done = await cli(
        "spawn",
        "--mode",
        "autonomous_peer",
        "--template",
        "powernode-hub",
        "--manual-attach",
        "--parent-url",
        "https://parent.example.test/",
    )

    assert done.code == 0, done.err
    [token] = TOKEN.findall(done.out)
    assert "shown ONCE" in done.out and token not in done.err
    assert re.match(r"Spawned autonomous_peer child [0-9a-f-]{36} \(proposed\)", done.out)
    assert token not in await database_text(database_url)  # only its hash is kept
    assert token not in files_text(home)
    accept = await client.post(ACCEPT, json={"acceptance_token": token, "contract_version": 1})
    assert accept.status_code == 200  # the one printed copy is the token


async def test_children_list_show_rotate_token_and_revoke(cli, client, runtime, database_url):
    headers = await operator_headers(runtime)
    first = await spawn(client, headers, "autonomous_peer", manual_attach=True)
    second = await spawn(client, headers, "managed_child", manual_attach=True)
    first_id, second_id = first["child"]["id"], second["child"]["id"]

    listed, table, shown = await asyncio.gather(
        cli("children", "list", "--json"),
        cli("children", "list", "--mode", "managed_child"),
        cli("children", "show", first_id),
    )
    rotated, revoked = await asyncio.gather(
        cli("children", "rotate-token", first_id),
        cli("children", "revoke", second_id, "--reason", "not needed"),
    )

    assert [d.code for d in (listed, table, shown, rotated, revoked)] == [0, 0, 0, 0, 0]
    assert {c["id"] for c in json.loads(listed.out)["children"]} == {first_id, second_id}
    assert table.out.splitlines()[0].split()[:4] == ["ID", "NAME", "SPAWN_MODE", "STATUS"]
    assert second_id in table.out and first_id not in table.out
    assert re.search(rf"id: {first_id}$", shown.out, re.M) and re.search(
        r"status: proposed$", shown.out, re.M
    )
    [new_token] = TOKEN.findall(rotated.out)
    assert new_token != first["acceptance_token"] and "shown ONCE" in rotated.out
    assert new_token not in await database_text(database_url)
    old = await client.post(
        ACCEPT, json={"acceptance_token": first["acceptance_token"], "contract_version": 1}
    )
    new = await client.post(ACCEPT, json={"acceptance_token": new_token, "contract_version": 1})
    assert (old.status_code, new.status_code) == (401, 200)
    assert revoked.out.strip() == f"Revoked {second_id} (revoked)"
    child = (await client.get(f"{CHILDREN}/{second_id}", headers=headers)).json()["data"]["child"]
    assert child["status"] == "revoked" and child["revoke_reason"] == "not needed"


async def test_findings_list_shows_open_findings_by_kind(cli, client, runtime):
    headers = await operator_headers(runtime)
    child_id = (await spawn(client, headers, "autonomous_peer", manual_attach=True))["child"]["id"]
    async with runtime.sessionmaker() as session:
        await session.execute(
            update(AcceptanceToken)
            .where(AcceptanceToken.peer_id == child_id)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
        await session.commit()
    await federation_findings_sweep({"runtime": runtime, "job_id": "cron:test"})

    table, listed, resolved = await asyncio.gather(
        cli("findings", "list", "--kind", "acceptance_token_expired"),
        cli("findings", "list", "--state", "open", "--peer", child_id, "--json"),
        cli("findings", "list", "--state", "resolved", "--json"),
    )

    assert [d.code for d in (table, listed, resolved)] == [0, 0, 0]
    header, row = table.out.splitlines()
    assert header.split() == ["KIND", "PEER_ID", "STATE", "LAST_SEEN", "MESSAGE"]
    assert row.split()[:3] == ["acceptance_token_expired", child_id, "open"]
    [finding] = json.loads(listed.out)
    assert finding["kind"] == "acceptance_token_expired" and finding["peer_id"] == child_id
    assert json.loads(resolved.out) == []


async def test_operator_token_create_mints_a_working_token_printed_once(cli, settings, database_url):
    database = {"DATABASE_URL": settings.database_url(), "POWERNODE_DATA_DIR": str(settings.data_dir)}

    minted = await cli("operator-token", "create", "--name", "ci", "--role", "viewer", env=database)
    token = minted.out.strip()
    reads, spawns = await asyncio.gather(
        cli("children", "list", token=token),
        cli(
            "spawn",
            "--mode",
            "autonomous_peer",
            "--template",
            "powernode-hub",
            "--manual-attach",
            token=token,
        ),
    )

    assert minted.code == 0, minted.err
    assert len(minted.out.splitlines()) == 1 and "shown ONCE" in minted.err and token not in minted.err
    assert token not in await database_text(database_url)
    assert reads.code == 0 and reads.out.startswith("ID")
    assert spawns.code != 0 and "system.children.spawn" in spawns.err
    assert len(spawns.err.strip().splitlines()) == 1 and "Traceback" not in spawns.err


async def test_a_wrong_token_or_no_hub_is_one_line_and_a_non_zero_exit(cli):
    forged, unreachable = await asyncio.gather(
        cli("children", "list", token="pnop_nope_" + "x" * 43),
        cli("children", "list", env={"POWERNODE_URL": "http://127.0.0.1:1"}),
    )

    for done in (forged, unreachable):
        assert done.code != 0 and done.out == ""
        assert len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err
    assert "HTTP 401" in forged.err
    assert "cannot reach the hub at http://127.0.0.1:1" in unreachable.err

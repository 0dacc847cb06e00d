import json
import signal
import socket
import stat

import asyncpg
import httpx
import pytest

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import free_port, wait_until
from tests.harness.processes import kill_9, processes_in
from tests.harness.serve import ServeProcess


@pytest.fixture
def hub_dir(scratch_dir):
    return scratch_dir / "hub"


@pytest.fixture
def start_serve(hub_dir):
    started = []

    def start():
        serve = ServeProcess(hub_dir, free_port()).start()
        started.append(serve)
        url, federation, token = serve.read_line(), serve.read_line(), serve.read_line()
        assert url == f"Powernode hub: http://127.0.0.1:{serve.port}"
        assert federation == f"Federation (mTLS): https://127.0.0.1:{serve.federation_port}"
        assert token == f"Operator token: {hub_dir / 'operator-token'}"
        guidance = serve.read_line()  # which URL is for whom, for someone who just started a hub
        assert f"Operators and the CLI use http://127.0.0.1:{serve.port}" in guidance
        assert f"enroll and heartbeat at https://127.0.0.1:{serve.federation_port}" in guidance
        return serve

    yield start
    for serve in started:
        serve.kill()


def readyz(serve):
    return httpx.get(f"http://127.0.0.1:{serve.port}/readyz", timeout=10)


async def operator_token_rows(hub_dir):
    connection = await asyncpg.connect(PostgresServer(hub_dir / "postgres").url("powernode"))
    try:
        return await connection.fetch("SELECT public_id FROM operator_token")
    finally:
        await connection.close()


def test_first_start_serves_and_writes_the_operator_token(start_serve, hub_dir):
    serve = start_serve()

    response = readyz(serve)
    token_file = hub_dir / "operator-token"

    assert response.status_code == 200
    assert response.json()["data"]["checks"] == {"database": True, "redis": True, "disk": True}
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip()
    assert token_file.read_text() not in serve.stderr()
    assert json.loads((hub_dir / "serve.json").read_text())["url"] == f"http://127.0.0.1:{serve.port}"


def test_ctrl_c_stops_the_hub_and_every_process_it_started(start_serve, hub_dir):
    serve = start_serve()
    assert len(processes_in(hub_dir)) >= 2  # PostgreSQL (and its workers) and Redis

    serve.send(signal.SIGINT)

    assert serve.wait(30) == 0
    assert processes_in(hub_dir) == []
    assert not (hub_dir / "serve.json").exists()


async def test_second_start_keeps_the_token_and_the_data(start_serve, hub_dir):
    first = start_serve()
    token = (hub_dir / "operator-token").read_text()
    rows = await operator_token_rows(hub_dir)
    first.send(signal.SIGTERM)
    assert first.wait(30) == 0

    second = start_serve()

    assert readyz(second).status_code == 200
    assert (hub_dir / "operator-token").read_text() == token
    assert await operator_token_rows(hub_dir) == rows and len(rows) == 1


def test_starts_cleanly_after_kill_9_of_the_hub_and_its_servers(start_serve, hub_dir):
    crashed = start_serve()
    kill_9([crashed.pid, *processes_in(hub_dir)])
    assert (hub_dir / "postgres" / "postmaster.pid").exists()

    again = start_serve()

    assert readyz(again).status_code == 200
    again.send(signal.SIGINT)
    assert again.wait(30) == 0
    assert processes_in(hub_dir) == []


def test_stopped_during_its_first_initdb_it_leaves_nothing_and_starts_next_time(start_serve, hub_dir):
    interrupted = ServeProcess(hub_dir, free_port()).start()
    marker = hub_dir / "postgres.initializing"
    assert wait_until(marker.exists, 30, interval=0.01)

    interrupted.send(signal.SIGTERM)

    assert interrupted.wait(30) == 0
    assert processes_in(hub_dir) == []
    assert readyz(start_serve()).status_code == 200


def test_a_port_in_use_is_one_clear_line(hub_dir, scratch_dir):
    serve = ServeProcess(hub_dir, free_port())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", serve.port))
        squatter.listen()
        serve.start()
        code = serve.wait(30)

    assert code == 1
    assert serve.stderr().strip().splitlines() == [
        f"powernode-hub: error: cannot listen on 127.0.0.1:{serve.port}: Address already in use"
    ]
    assert not hub_dir.exists()

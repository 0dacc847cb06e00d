"""`serve` through a lost Redis or a vanished dependency, the faults injected for real."""

import os
import signal

import httpx

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import free_port, pid_alive, wait_until
from hub.embedded.redis import RedisServer
from tests.harness.processes import processes_in
from tests.harness.serve import ServeProcess

CHILDREN = "/api/v1/system/federation/children"
FAST_SWEEP = {"POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "1"}
SWEEP_DONE = "job federation_findings_sweep ok"


def started(hub_dir, env=None):
    serve = ServeProcess(hub_dir, free_port(), env=env).start()
    for _ in range(3):  # hub URL, federation URL, operator token
        serve.read_line(timeout=120)
    return serve


def get(serve, path, **kwargs):
    return httpx.get(f"http://127.0.0.1:{serve.port}{path}", timeout=20, **kwargs)


def operator(hub_dir):
    return {"Authorization": f"Bearer {(hub_dir / 'operator-token').read_text().strip()}"}


def test_serve_outlives_its_redis_answers_without_it_and_restarts_it(scratch_dir):
    hub_dir = scratch_dir / "hub"
    serve = started(hub_dir, FAST_SWEEP)
    try:
        server = RedisServer(hub_dir / "redis")
        port, pid = server.port, server.pid()
        assert pid is not None

        os.kill(pid, signal.SIGSTOP)  # Redis gone quiet: no answer at all
        try:
            not_ready = get(serve, "/readyz")
            listed = get(serve, CHILDREN, headers=operator(hub_dir))
        finally:
            os.kill(pid, signal.SIGKILL)  # then gone for good: the hub starts its own again

        assert not_ready.status_code == 503
        assert "Redis is unreachable" in not_ready.json()["error"]
        assert not_ready.json()["details"]["checks"]["database"] is True
        assert listed.status_code == 200  # needs no Redis
        assert wait_until(lambda: get(serve, "/readyz").status_code == 200, 90, interval=0.5)
        restarted = RedisServer(hub_dir / "redis")
        assert restarted.port == port and restarted.pid() not in (None, pid)
        assert serve.process is not None and serve.process.poll() is None
        back = len(serve.stderr())  # the worker took up its queue again: a sweep runs after this
        assert wait_until(lambda: SWEEP_DONE in serve.stderr()[back:], 90, interval=0.5)
    finally:
        serve.kill()


def test_sigterm_ends_serve_promptly_with_its_database_frozen_and_its_redis_killed(scratch_dir):
    hub_dir = scratch_dir / "hub"
    serve = started(hub_dir)
    postgres = PostgresServer(hub_dir / "postgres").pid()
    redis_pid = RedisServer(hub_dir / "redis").pid()
    assert postgres is not None and redis_pid is not None
    os.kill(postgres, signal.SIGSTOP)
    os.kill(redis_pid, signal.SIGKILL)
    try:
        serve.send(signal.SIGTERM)

        assert serve.wait(90) == 0  # bounded: raises TimeoutExpired otherwise
        assert processes_in(hub_dir) == []
        assert not pid_alive(postgres)
    finally:
        if pid_alive(postgres):
            os.kill(postgres, signal.SIGCONT)
        serve.kill()

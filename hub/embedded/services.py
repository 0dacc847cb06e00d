"""The embedded default: PostgreSQL and Redis of one hub, in its data dir.

DIR/            0700 (0711 as root: the PostgreSQL server user must traverse it)
  lock          held (flock) while a hub uses DIR; the kernel drops it when that hub dies
  postgres/     the cluster (0700, owned by the server user); postgres.json, .log, .run/ beside
  redis/        redis-server's config, append-only file, pid file and log
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from types import TracebackType

from hub import dbroles
from hub.embedded.postgres import PostgresServer
from hub.embedded.privileges import ensure_traversable
from hub.embedded.process import EmbeddedError
from hub.embedded.redis import RedisServer

log = logging.getLogger(__name__)

DATABASE = "powernode"
SUPERUSER = "powernode"


class EmbeddedServices:
    """Start with `start()` (or `with`), stop with `stop()`: every process is stopped by pid."""

    def __init__(self, data_dir: Path | str, *, redis: bool = True, durable: bool = True):
        self.data_dir = Path(data_dir).absolute()
        self.durable = durable
        self.postgres = PostgresServer(self.data_dir / "postgres")
        self.redis = RedisServer(self.data_dir / "redis") if redis else None
        self._lock_fd: int | None = None
        self._restarting = threading.Lock()  # a watchdog's restart and stop() never overlap

    def __repr__(self) -> str:
        return (
            f"EmbeddedServices(data_dir='{self.data_dir}', postgres={self.postgres!r}, redis={self.redis!r})"
        )

    @property
    def database_url(self) -> str:
        """The hub's URL: its owner role, no superuser (the superuser only bootstraps)."""
        user, password = self.postgres.owner_credentials(dbroles.OWNER)
        return self.postgres.url(DATABASE, user=user, password=password)

    @property
    def redis_url(self) -> str:
        if self.redis is None:
            raise EmbeddedError("the embedded Redis was not requested")
        return self.redis.url()

    def start(self) -> EmbeddedServices:
        self._prepare_dir()
        self._lock()
        try:
            self._start_postgres()
            if self.redis is not None:
                self.redis.start()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_dead(self) -> list[str]:
        """Start again, on their recorded ports, the servers that died under us; what was restarted."""
        restarted: list[str] = []
        with self._restarting:
            if self._lock_fd is None:
                return restarted
            if not self.postgres.is_running():
                log.warning("the embedded PostgreSQL is not running; starting it again")
                self.postgres.start()
                restarted.append("postgres")
            if self.redis is not None and not self.redis.is_running():
                log.warning("the embedded Redis is not running; starting it again")
                self.redis.start()
                restarted.append("redis")
        return restarted

    def stop(self) -> None:
        """Stop Redis, then PostgreSQL; safe to call twice and after a failed start."""
        with self._restarting:
            self._stop()

    def _stop(self) -> None:
        if self._lock_fd is None:
            return  # not ours to stop: we never started, or another hub holds the data dir
        try:
            if self.redis is not None:
                self.redis.stop()
        finally:
            try:
                self.postgres.stop()
            finally:
                self._unlock()

    def __enter__(self) -> EmbeddedServices:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Adds o+x (0711) to DIR and its ancestors only where the server user needs to pass.
        ensure_traversable(self.postgres.data_dir)

    def _start_postgres(self) -> None:
        if not self.postgres.initialized:
            log.info("initialising the embedded PostgreSQL in %s", self.postgres.data_dir)
            self.postgres.init(superuser=SUPERUSER, durable=self.durable)
        self.postgres.start()
        bootstrap_database(self.postgres, DATABASE)

    def _lock(self) -> None:
        """One hub per data dir: two would fight over the same postmaster and Redis."""
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedError(
                f"{self.data_dir} is in use by another powernode-hub (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def bootstrap_database(server: PostgresServer, database: str) -> None:
    """As the superuser: the owner and replication admin roles, `database` owned by the owner, and
    the admin functions in it (hub/dbroles.py). Safe to run on every start."""
    owner, password = server.owner_credentials(dbroles.OWNER)
    server.psql(";\n".join(dbroles.cluster_statements(owner=owner, owner_password=password)))
    if database not in server.databases():
        server.psql(f"CREATE DATABASE {dbroles.quote_ident(database)} OWNER {dbroles.quote_ident(owner)}")
    server.psql(";\n".join(dbroles.database_statements(database=database, owner=owner)), database=database)

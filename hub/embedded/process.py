"""Process plumbing shared by the embedded servers: ports, liveness by pid, stopping, private files."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"  # every embedded server listens here only


class EmbeddedError(RuntimeError):
    """An embedded server could not be set up, started or stopped; the message is one line for people."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on `port` now: with SO_REUSEADDR, as PostgreSQL and Redis bind,
    so connections of a previous run still lingering in TIME_WAIT do not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
        return True


_SERVICE_PORTS = (20000, 32767)  # below Linux's default ephemeral range (32768-60999)


def service_port(host: str = LOOPBACK) -> int:
    """A free port for a server that keeps it for good (recorded in its data dir).

    Chosen below the kernel's ephemeral range, so that while the server is down no outgoing
    connection is handed its port and it can always come back on it."""
    low, high = _SERVICE_PORTS
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, ephemeral_low - 1)
    except (OSError, ValueError, IndexError):
        pass
    if high - low >= 100:
        for _ in range(100):
            port = random.randint(low, high)  # noqa: S311 - a port number, not a secret
            if port_is_free(port, host):
                return port
    return free_port(host)


def require_port(port: int, server: str, recorded_in: Path, host: str = LOOPBACK) -> None:
    """A server keeps its port across restarts (its clients, cluster members among them, know it);
    if someone else holds it, say so rather than move."""
    if not port_is_free(port, host):
        raise EmbeddedError(
            f"port {port} of the embedded {server} (recorded in {recorded_in}) is in use by another "
            "process: stop that process, or edit the port there"
        )


def pid_alive(pid: int | None) -> bool:
    """True for a live process; a zombie counts as dead (PID 1 here does not always reap orphans)."""
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def slow_machine_factor() -> float:
    """POWERNODE_EMBEDDED_TIMEOUT_FACTOR (default 1): how much longer than usual the embedded
    services may take to initialise and start, for a starved machine such as a TCG guest."""
    try:
        return max(1.0, float(os.environ.get("POWERNODE_EMBEDDED_TIMEOUT_FACTOR", "1")))
    except ValueError:
        return 1.0


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Ask a process to stop with `sig`, and SIGKILL it if it has not gone within `timeout`."""
    try:
        os.kill(pid, sig)
        os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) server handles the signal too
    except ProcessLookupError:
        return
    if wait_until(lambda: not pid_alive(pid), timeout):
        return
    log.warning("pid %d ignored signal %d for %.0fs; killing it", pid, sig, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_until(lambda: not pid_alive(pid), 10.0)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    as_user: tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a tool to completion; on failure raise EmbeddedError with the tool's last error line.

    The tool gets its own process group: a Ctrl-C meant for the hub does not reach it, and if the
    hub is interrupted meanwhile the whole group goes (initdb leaves postgres children otherwise).
    """
    user_args: dict[str, Any] = {}
    if as_user is not None:
        user_args = {"user": as_user[0], "group": as_user[1], "extra_groups": []}
    name = Path(argv[0]).name
    try:
        process = subprocess.Popen(
            [str(arg) for arg in argv],
            cwd="/",  # the server user cannot enter root's working directory
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **user_args,
        )
    except OSError as e:
        raise EmbeddedError(f"{name} could not run: {e}") from e
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException as e:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            raise EmbeddedError(f"{name} did not finish within {timeout:.0f}s") from e
        raise
    if process.returncode != 0:
        raise EmbeddedError(f"{name} failed: {last_line(stderr or stdout)}")
    return stdout


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def log_tail(path: Path) -> str:
    """The last meaningful line of a server log, for a one-line error."""
    try:
        return last_line(path.read_text(errors="replace")[-4000:])
    except OSError:
        return f"no log at {path}"


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write a 0600 file atomically: readers see the old content or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise EmbeddedError(f"cannot read {path}: {e}") from e
    return data if isinstance(data, dict) else None


def package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed package, found without importing it (imports have effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {package} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


PRIVATE_UMASK = 0o077
_SHARED_BITS = 0o066  # group/other read and write; search (x) may stay for the PostgreSQL user


def harden_data_dir(data_dir: Path) -> int:
    """Make nothing under the data dir group- or world-readable (or writable), whatever an older
    version or another tool left there; new files are private through PRIVATE_UMASK. Returns how
    many modes it changed. Symlinks are not followed."""
    changed = 0
    if not data_dir.exists():
        return changed
    for root, dirs, files in os.walk(data_dir):
        for path in [Path(root)] + [Path(root) / name for name in (*dirs, *files)]:
            try:
                info = path.lstat()
            except FileNotFoundError:  # a server removed it while we walked
                continue
            mode = info.st_mode & 0o7777
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)) or not mode & _SHARED_BITS:
                continue  # symlinks are not followed; a live server's socket is its own business
            try:
                os.chmod(path, mode & ~_SHARED_BITS)
                changed += 1
            except (FileNotFoundError, PermissionError):
                continue
    return changed

"""Who the embedded PostgreSQL runs as, and the directory permissions that user needs."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
from pathlib import Path

from hub.embedded.process import EmbeddedError, run

log = logging.getLogger(__name__)

CREATED_USER = "powernode"


def server_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None when we are not root and run it as ourselves.

    PostgreSQL refuses to run as root, so as root we use the `postgres` system user if the machine
    has one, else a system user `powernode` that we create.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", CREATED_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    _create_system_user(CREATED_USER)
    entry = pwd.getpwnam(CREATED_USER)
    return entry.pw_uid, entry.pw_gid


def _create_system_user(name: str) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
    log.info("created system user %s to run the embedded PostgreSQL", name)


def ensure_traversable(path: Path) -> None:
    """Give the server user search (x) permission on every ancestor of `path`, adding only o+x."""
    user = server_user()
    if user is None:
        return
    for ancestor in reversed(Path(path).absolute().parents):
        info = ancestor.stat()
        if info.st_uid == user[0] or info.st_mode & stat.S_IXOTH:
            continue
        os.chmod(ancestor, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        log.info("added o+x to %s so the PostgreSQL server user can reach its files", ancestor)


def private_dir(path: Path, owner: tuple[int, int] | None) -> Path:
    """Create (or repair) a 0700 directory owned by `owner`, refusing symlinks planted in its place."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True)
        info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise EmbeddedError(f"{path} exists and is not a directory")
    if owner is not None and (info.st_uid, info.st_gid) != owner:
        os.chown(path, *owner)
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def owned_file(path: Path, owner: tuple[int, int] | None) -> Path:
    """Create an empty 0600 file for the server user to append to (its directory may be root's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    if owner is not None:
        os.chown(path, *owner)
    return path

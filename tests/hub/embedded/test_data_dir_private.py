"""Issue 11 #8 (rotating the data dir's token revokes the old one) and #15 (nothing under the data
dir is group/world-readable), on a real embedded `powernode-hub serve` restarted once."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import httpx

from hub.embedded.process import free_port
from tests.harness.serve import ServeProcess

CHILDREN = "/api/v1/system/federation/children"


def shared_entries(data_dir: Path) -> list[str]:
    """Everything under data_dir that a group or other user could read or write. (PostgreSQL's
    socket is 0777 by design; it sits in a 0700 directory, which is what this checks for it.)"""
    found = []
    for root, dirs, files in os.walk(data_dir):
        for path in [Path(root)] + [Path(root) / n for n in (*dirs, *files)]:
            info = path.lstat()
            if not (stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode)) and info.st_mode & 0o066:
                found.append(f"{path.relative_to(data_dir)} {stat.filemode(info.st_mode)}")
    return found


def _start(hub_dir: Path) -> ServeProcess:
    serve = ServeProcess(hub_dir, free_port()).start()
    for _ in range(3):  # hub URL, federation URL, operator token file
        serve.read_line(180)
    return serve


def _children(serve: ServeProcess, token: str) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{serve.port}{CHILDREN}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_rotating_the_data_dir_token_revokes_the_old_one_and_a_restart_makes_everything_private(
    scratch_dir,
):
    hub_dir = scratch_dir / "hub"
    first = _start(hub_dir)
    try:
        old = (hub_dir / "operator-token").read_text().strip()
        assert _children(first, old).status_code == 200
        assert shared_entries(hub_dir) == []
    finally:
        first.send(signal.SIGTERM)
        first.wait(60)
    # What an older version or a careless tool may have left: loose modes, a readable node log.
    (hub_dir / "operator-token").unlink()  # the documented way to rotate it
    node = hub_dir / "nodes" / "0f0f0f0f-0000-0000-0000-000000000000"
    node.mkdir(parents=True, mode=0o755)
    (node / "console.log").write_text("boot log\n")
    (node / "federation-payload.json").write_text("{}")
    for path in (hub_dir / "nodes", node, node / "console.log", node / "federation-payload.json"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (hub_dir / "secrets").mkdir(exist_ok=True)
    (hub_dir / "secrets").chmod(0o755)
    assert shared_entries(hub_dir) != []

    second = _start(hub_dir)
    try:
        new = (hub_dir / "operator-token").read_text().strip()
        rotated_out, current = _children(second, old), _children(second, new)
        private = shared_entries(hub_dir)
    finally:
        second.send(signal.SIGTERM)
        second.wait(60)

    assert new != old
    assert current.status_code == 200
    assert rotated_out.status_code == 401 and rotated_out.json()["error"] == "Invalid operator token"
    assert private == []

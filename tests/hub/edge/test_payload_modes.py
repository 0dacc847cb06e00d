"""Issue 11 #15: payload files hold the acceptance token. Staged by the real hub's `manual`
provisioner, loosened by someone, re-staged by a token rotation: they are 0600 again."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.hub.helpers import CHILDREN, SPAWN


def _modes(node_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(node_dir)): stat.S_IMODE(p.stat().st_mode) for p in [node_dir, *node_dir.rglob("*")]
    }


def test_payload_files_are_forced_back_to_0600_when_restaged(edge_hub):
    with edge_hub.http() as http:
        spawned = http.post(
            SPAWN,
            headers=edge_hub.operator(),
            json={
                "spawn_mode": "managed_child",
                "parent_url": edge_hub.federation_url,
                "spawn_target": {"template_id": "powernode-hub"},
            },
        )
        assert spawned.status_code == 201, spawned.text
        child = spawned.json()["data"]["child"]
        node_dir = edge_hub.serve.data_dir / "nodes" / child["node_instance"]["id"]
        staged = _modes(node_dir)
        for path in node_dir.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        rotated = http.post(f"{CHILDREN}/{child['id']}/rotate_token", headers=edge_hub.operator(), json={})

    assert rotated.status_code == 200, rotated.text
    token = rotated.json()["data"]["acceptance_token"]
    payload = node_dir / "federation-payload.json"
    assert token in payload.read_text()
    restaged = _modes(node_dir)
    files = {name: mode for name, mode in restaged.items() if (node_dir / name).is_file()}
    assert files and set(files.values()) == {0o600}, restaged
    assert {mode & 0o066 for mode in restaged.values()} == {0}, restaged  # nothing readable by others
    assert staged.keys() <= restaged.keys()

"""Issue 11 #14: a peer's strings (platform URL, platform id, name) cannot drive the operator's
terminal. A real child enrolls with escape sequences in them; the real CLI shows them escaped."""

from __future__ import annotations

import json

from tests.hub.edge.conftest import FEDERATION_API, enroll_child

EVIL_URL = "https://child.example.test/\x1b]0;owned\x07\x1b[2J\u202e\r\nfake line"


def test_the_cli_never_prints_control_characters_a_peer_sent(edge_hub, harness_dir):
    peer = enroll_child(edge_hub, harness_dir, name="evil")
    with edge_hub.mtls(peer.cert) as http:
        again = http.post(
            f"{FEDERATION_API}/enroll",
            json={"platform_id": "p\x1b[31mred", "platform_url": EVIL_URL, "name": "evil\x1b[0m"},
        )
    assert again.status_code == 200, again.text

    shown = edge_hub.cli("children", "show", peer.id)
    listed = edge_hub.cli("children", "list")
    as_json = edge_hub.cli("children", "show", peer.id, "--json")

    for done in (shown, listed, as_json):
        assert done.returncode == 0, done.stderr
        printed = done.stdout + done.stderr
        assert not any(c in printed for c in "\x1b\x07\r\u202e"), repr(printed)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\u202e\\r\\nfake line" in shown.stdout
    assert not any(line.startswith("fake line") for line in shown.stdout.splitlines())
    assert json.loads(as_json.stdout)["remote_instance_url"] == EVIL_URL  # scripts get the real value

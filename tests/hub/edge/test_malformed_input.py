"""Issue 11 #11: malformed input is a 4xx in the error envelope, never a 500, on every endpoint of a
real `powernode-hub serve` (accept and the raw-ASGI heartbeat included), for an operator with every
permission and for an enrolled peer with its certificate; and nothing the requests carried reaches
the hub's log."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from fastapi.routing import APIRoute

from hub.config import Settings
from hub.main import create_app
from tests.hub.edge.conftest import enroll_child

MARKER = "zq-marker-7c1f"  # in every malformed body: it must never be logged
_DEEP = "[" * 5000 + "]" * 5000


def _nested(depth: int) -> str:
    return "{" + '"a":{' * (depth - 1) + f'"m":"{MARKER}"' + "}" * depth


BODIES: dict[str, bytes] = {
    "nul escape": json.dumps(
        {"name": f"a\u0000{MARKER}", "acceptance_token": f"pnat_\u0000{MARKER}"}
    ).encode(),
    "raw nul": b'{"name": "a\x00' + MARKER.encode() + b'"}',
    "invalid utf-8": b'{"name": "\xff\xfe' + MARKER.encode() + b'"}',
    "lone surrogate": b'{"name": "\\ud800' + MARKER.encode() + b'", "platform_id": "\\udfff"}',
    "deeply nested": _DEEP.encode(),
    "nested 70 levels": _nested(70).encode(),
    "huge": b'{"name": "' + MARKER.encode() * 80_000 + b'"}',  # over both limits
    "not json": b"{" + MARKER.encode(),
    "wrong shapes": json.dumps(
        {"spawn_mode": [MARKER], "contract_version": MARKER, "policies": MARKER}
    ).encode(),
}
# Not the marker: the access log shows query strings.
QUERIES = ["?status=%00x&limit=%00", "?kind=%ff%fex&state=%c0%80", "?cursor=%00"]


def _routes() -> list[tuple[str, str]]:
    app = create_app(Settings(_env_file=None))
    found = [("POST", "/api/v1/system/federation_api/heartbeat")]
    for route in app.routes:
        if isinstance(route, APIRoute):
            found += [(method, route.path) for method in sorted(route.methods)]
    return found


ROUTES = _routes()


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def _check(response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert body["success"] is False and body["code"], what
        assert MARKER not in response.text, f"{what} echoes the request"


@pytest.mark.parametrize("as_peer", [False, True], ids=["operator", "peer"])
def test_every_endpoint_answers_malformed_input_with_a_4xx(edge_hub, harness_dir, as_peer):
    headers = {"Authorization": f"Bearer {edge_hub.operator_token}", "Content-Type": "application/json"}
    if as_peer:  # a peer of its own: a body that happens to be a valid `revoke` may end its peering
        peer = enroll_child(edge_hub, harness_dir, name=f"fuzzed-{uuid.uuid4().hex[:6]}")
        client = edge_hub.mtls(peer.cert)
    else:
        client = edge_hub.http()
    with client:
        for method, path in ROUTES:
            if as_peer and "/federation_api/" not in path:
                continue
            for ident in (str(uuid.uuid4()), "%00", "%ff", "x" * 3000):
                url = _fill(path, ident)
                if method in ("POST", "PUT", "PATCH") and not ident.startswith("%"):
                    for name, body in BODIES.items():
                        response = client.request(method, url, content=body, headers=headers)
                        _check(response, f"{method} {url} {name}")
                for query in QUERIES:
                    _check(client.request(method, url + query, headers=headers), f"{method} {url}{query}")

    log = edge_hub.serve.stderr()
    assert MARKER not in log
    assert "Traceback" not in log and '"level": "ERROR"' not in log

"""Issue 11 #4: proxy trust cannot be spoofed. The hub runs for real with 127.0.0.2 as its trusted
proxy; the attacker talks to it from 127.0.0.1 (a loopback neighbour) and claims an enrolled peer's
identity through forwarded headers."""

from __future__ import annotations

from urllib.parse import quote_plus

from tests.hub.edge.conftest import FEDERATION_API, PROXY

HEARTBEAT = f"{FEDERATION_API}/heartbeat"
HEADER = "X-Forwarded-Tls-Client-Cert-Info"  # what deploy/traefik sends, the default


def traefik_value(peer_id: str) -> str:
    return quote_plus(f'Subject="CN=fed:{peer_id}"')


def test_a_loopback_neighbour_cannot_pass_for_the_proxy_with_x_forwarded_for(edge_hub, enrolled_peer):
    forged = {
        "X-Forwarded-For": PROXY,  # uvicorn believed this from 127.0.0.1 before
        "X-Real-IP": PROXY,
        "Forwarded": f"for={PROXY}",
        HEADER: traefik_value(enrolled_peer.id),
        "X-Client-S-DN-CN": f"fed:{enrolled_peer.id}",
        "X-Forwarded-TLS-Client-Cert-Subject": f"CN=fed:{enrolled_peer.id}",
    }
    with edge_hub.http() as attacker:
        beat = attacker.post(HEARTBEAT, headers=forged)
        peer = attacker.get(f"{FEDERATION_API}/peer", headers=forged)
        revoke = attacker.post(f"{FEDERATION_API}/revoke", headers=forged)

    for response in (beat, peer, revoke):
        assert response.status_code == 401, response.text
        assert response.json() == {
            "success": False,
            "error": "A valid peer client certificate is required",
            "code": "UNAUTHORIZED",
        }


def test_on_the_tls_listener_forwarded_headers_are_ignored_too(edge_hub, enrolled_peer):
    forged = {"X-Forwarded-For": PROXY, HEADER: traefik_value(enrolled_peer.id)}
    with edge_hub.mtls() as attacker:  # TLS, but no client certificate
        response = attacker.post(HEARTBEAT, headers=forged)

    assert response.status_code == 401


def test_from_the_trusted_proxy_only_the_configured_header_is_believed(edge_hub, enrolled_peer):
    with edge_hub.http(source=PROXY) as proxy:
        believed = proxy.post(HEARTBEAT, headers={HEADER: traefik_value(enrolled_peer.id)})
        other_headers = proxy.post(
            HEARTBEAT,
            headers={
                "X-Client-S-DN-CN": f"fed:{enrolled_peer.id}",
                "X-Forwarded-TLS-Client-Cert-Subject": f"CN=fed:{enrolled_peer.id}",
            },
        )

    assert believed.status_code == 200, believed.text
    assert believed.json()["data"]["status"] == "active"
    assert other_headers.status_code == 401


def test_the_header_twice_or_empty_is_refused(edge_hub, enrolled_peer):
    value = traefik_value(enrolled_peer.id).encode()
    with edge_hub.http(source=PROXY) as proxy:
        twice = proxy.post(HEARTBEAT, headers=[(HEADER.encode(), value), (HEADER.encode(), value)])
        empty = proxy.post(HEARTBEAT, headers={HEADER: ""})
        peer_twice = proxy.get(f"{FEDERATION_API}/peer", headers=[(HEADER.encode(), value)] * 2)

    for response in (twice, empty, peer_twice):
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "AMBIGUOUS_CLIENT_CERT"


def test_the_client_address_is_rewritten_only_behind_the_trusted_proxy(edge_hub):
    """uvicorn's access log names the client address the app saw."""
    with edge_hub.http() as attacker, edge_hub.http(source=PROXY) as proxy:
        attacker.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"})
        proxy.get("/healthz", headers={"X-Forwarded-For": "198.51.100.9, 127.0.0.2"})
        attacker.get("/healthz?marker=end")

    log = _wait_for_log(edge_hub, "marker=end")
    assert "203.0.113.7" not in log
    assert "198.51.100.9" in log


def _wait_for_log(edge_hub, marker: str) -> str:
    from hub.embedded.process import wait_until

    assert wait_until(lambda: marker in edge_hub.serve.stderr(), 30), "no access log line"
    return edge_hub.serve.stderr()

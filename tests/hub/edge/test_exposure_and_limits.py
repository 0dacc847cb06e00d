"""Issue 11 #7 and #12 against a real `powernode-hub serve`: request bodies are bounded before
anything is read or authenticated, on both listeners; /metrics wants a token; the federation
listener serves the federation API only; the docs can be off."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from tests.hub.edge.conftest import FEDERATION_API
from tests.hub.helpers import CHILDREN, SPAWN

MiB = 1 << 20


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _upload(address: tuple[str, int], head: bytes, total: int, tls: ssl.SSLContext | None) -> bytes:
    """Send `head` and then up to `total` bytes of body, reading the answer meanwhile; what the
    server answered (it may close the connection long before the body is through)."""
    raw = socket.create_connection(address, timeout=60)
    sock = tls.wrap_socket(raw, server_hostname=address[0]) if tls else raw
    answer = bytearray()

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    chunk = b"1" * MiB
    chunked = b"chunked" in head.lower()
    try:
        sock.sendall(head)
        for _ in range(total // MiB):
            sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:  # the hub closed the connection after answering: what we want
        pass
    reader.join(60)
    sock.close()
    return bytes(answer)


@pytest.mark.parametrize("listener", ["api", "federation"])
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_200_mib_unauthenticated_post_is_413_and_costs_the_hub_almost_no_memory(
    edge_hub, listener, framing
):
    url = edge_hub.url if listener == "api" else edge_hub.federation_url
    host, port = url.split("://")[1].rsplit(":", 1)
    path = SPAWN if listener == "api" else f"{FEDERATION_API}/accept"
    length = b"Transfer-Encoding: chunked" if framing == "chunked" else b"Content-Length: %d" % (200 * MiB)
    head = b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n%b\r\n\r\n" % (
        path.encode(),
        host.encode(),
        length,
    )
    tls = ssl.create_default_context(cafile=str(edge_hub.ca_file)) if listener == "federation" else None
    pid = edge_hub.serve.pid
    before = _rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS, so it shows this upload's peak

    # The hub answers 413 and closes while we still send; now and then its RST overtakes the answer
    # in our receive queue (b''): that upload is sent again, the memory bound holds for all of them.
    answer = b""
    for _ in range(3):
        answer = _upload((host, int(port)), head, 200 * MiB, tls)
        if answer:
            break

    peak = _rss_kib(pid, "VmHWM")
    print(f"{listener}/{framing}: RSS before {before} KiB, peak during the upload {peak} KiB")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":"PAYLOAD_TOO_LARGE"' in answer and b'"success":false' in answer
    assert peak - before < 8 * 1024, f"the hub grew by {(peak - before) / 1024:.1f} MiB"


def test_a_body_over_the_federation_limit_is_refused_before_authentication(edge_hub):
    big = {"acceptance_token": "pnat_x_y", "contract_version": 1, "csr_pem": "A" * (80 * 1024)}
    with edge_hub.http() as http:
        federation = http.post(f"{FEDERATION_API}/accept", json=big)
        operator = http.post(SPAWN, json={"name": "x" * (2 * MiB)}, headers=edge_hub.operator())
        small_enough = http.post(SPAWN, json={"name": "x" * (80 * 1024)})

    assert federation.status_code == 413 and federation.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert operator.status_code == 413
    assert small_enough.status_code == 401  # under the operator limit: on to authentication


def test_metrics_need_a_token_with_the_metrics_permission(edge_hub):
    with edge_hub.http() as http:
        anonymous = http.get("/metrics")
        forged = http.get("/metrics", headers={"Authorization": "Bearer pnop_nope_nope"})
        viewer = http.get("/metrics", headers={"Authorization": f"Bearer {edge_hub.viewer_token}"})

    assert anonymous.status_code == 401 and anonymous.json()["success"] is False
    assert forged.status_code == 401
    assert viewer.status_code == 200 and "powernode_" in viewer.text


def test_the_federation_listener_serves_neither_the_operator_api_nor_metrics(edge_hub):
    operator = edge_hub.operator()
    with edge_hub.mtls() as http:
        children = http.get(CHILDREN, headers=operator)
        spawn = http.post(SPAWN, headers=operator, json={})
        metrics = http.get("/metrics", headers=operator)
        readyz = http.get("/readyz")
        accept = http.post(f"{FEDERATION_API}/accept", json={"acceptance_token": "", "contract_version": 1})
    with edge_hub.http() as http:
        on_api = http.get(CHILDREN, headers=operator)

    for response in (children, spawn, metrics, readyz):
        assert response.status_code == 404, response.text
        assert response.json() == {"success": False, "error": "Not Found", "code": "NOT_FOUND"}
    assert accept.status_code == 422  # the federation API is there
    assert on_api.status_code == 200


def test_the_docs_can_be_turned_off(edge_hub):
    with edge_hub.http() as http:
        responses = [http.get(path) for path in ("/docs", "/redoc", "/openapi.json")]

    assert [r.status_code for r in responses] == [404, 404, 404]

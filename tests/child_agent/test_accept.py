"""first-run against real HTTPS endpoints: CA pinning, retries with backoff, final answers, the key."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.child_agent.helpers import (
    TOKEN,
    ThrowawayCA,
    TlsEndpoint,
    assert_one_error_line,
    file_mode,
    free_port,
    fw_cfg_tree,
    payload,
    run_agent,
    start_agent,
)

ACCEPT_PATH = "/api/v1/system/federation_api/accept"


@pytest.fixture
def parent_ca() -> ThrowawayCA:
    return ThrowawayCA.create("parent federation CA")


@pytest.fixture
def endpoint(tmp_path: Path, parent_ca: ThrowawayCA) -> Iterator[TlsEndpoint]:
    """A real HTTPS endpoint signed by parent_ca that answers every request with the wire's 401."""
    server = TlsEndpoint(parent_ca.server_files(tmp_path), free_port()).start()
    yield server
    server.stop()


def _fw_cfg(tmp_path: Path, port: int, ca: ThrowawayCA) -> Path:
    return fw_cfg_tree(tmp_path / "fw_cfg", payload(parent_url=f"https://127.0.0.1:{port}/", ca_pem=ca.pem))


def _attempt_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "accept: attempt" in line]


def test_a_parent_signed_by_another_ca_never_receives_the_token(
    tmp_path: Path, endpoint: TlsEndpoint
) -> None:
    impostor_view = ThrowawayCA.create("some other CA")
    root = _fw_cfg(tmp_path, endpoint.port, impostor_view)
    done = run_agent("first-run", "--fw-cfg-root", root, "--state-dir", tmp_path / "state", "--max-wait", "5")
    assert done.returncode == 3
    assert_one_error_line(
        done,
        "refused to send the acceptance token",
        "does not verify against the CA in the payload",
        "unable to get local issuer certificate",
    )
    assert endpoint.requests == []
    assert endpoint.handshakes_failed >= 1  # it did connect, and stopped at the certificate
    assert TOKEN not in done.stdout + done.stderr


def test_the_parents_final_answer_is_printed_and_the_request_is_well_formed(
    tmp_path: Path, endpoint: TlsEndpoint, parent_ca: ThrowawayCA
) -> None:
    root = _fw_cfg(tmp_path, endpoint.port, parent_ca)
    done = run_agent("first-run", "--fw-cfg-root", root, "--state-dir", tmp_path / "state", "--max-wait", "5")
    assert done.returncode == 3
    assert_one_error_line(done, "HTTP 401", "acceptance_token not recognized or expired")
    [request] = endpoint.requests  # a 401 is final: no retry
    body = json.loads(request.body)
    assert (request.method, request.path) == ("POST", ACCEPT_PATH)
    assert request.headers["User-Agent"].startswith("powernode-child-agent/")
    assert body["acceptance_token"] == TOKEN
    assert body["contract_version"] == 1
    assert body["csr_pem"].startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert body["child"] == {
        "platform_id": "0d9e4f5a-0000-4000-8000-000000000002",
        "url": "https://child-test-1.example.test/",
        "name": "child-test-1",
    }
    assert TOKEN not in done.stdout + done.stderr


def test_an_unreachable_parent_is_retried_until_max_wait(tmp_path: Path, parent_ca: ThrowawayCA) -> None:
    root = _fw_cfg(tmp_path, free_port(), parent_ca)
    started = time.monotonic()
    done = run_agent("first-run", "--fw-cfg-root", root, "--state-dir", tmp_path / "state", "--max-wait", "3")
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    line = assert_one_error_line(done, "gave up after", "Connection refused")
    assert len(_attempt_lines(done.stdout)) >= 3, done.stdout
    assert elapsed > 2.5, line  # it kept trying until max-wait...
    assert re.search(r"attempts in [34]s", line), line  # ...and then gave up, by its own clock


def test_a_parent_that_comes_up_late_is_reached(tmp_path: Path, parent_ca: ThrowawayCA) -> None:
    port = free_port()
    root = _fw_cfg(tmp_path, port, parent_ca)
    state = tmp_path / "state"
    agent = start_agent("first-run", "--fw-cfg-root", root, "--state-dir", state, "--max-wait", "60")
    try:
        # The parent comes up only after the agent has found it down once (however slow the
        # machine is to start the agent): no sleep to guess at.
        assert agent.stdout is not None
        before = []
        for line in agent.stdout:
            before.append(line)
            if _attempt_lines(line):
                break
        late = TlsEndpoint(parent_ca.server_files(tmp_path), port).start()
        try:
            rest, stderr = agent.communicate(timeout=120)
        finally:
            late.stop()
        stdout = "".join(before) + rest
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 3
    assert "acceptance_token not recognized or expired" in stderr
    assert len(late.requests) == 1
    assert _attempt_lines(stdout), stdout


def test_the_key_is_private_and_reused_across_runs(
    tmp_path: Path, endpoint: TlsEndpoint, parent_ca: ThrowawayCA
) -> None:
    state = tmp_path / "state"
    root = _fw_cfg(tmp_path, endpoint.port, parent_ca)
    first = run_agent("first-run", "--fw-cfg-root", root, "--state-dir", state, "--max-wait", "0")
    key = (state / "client.key").read_bytes()
    second = run_agent("first-run", "--fw-cfg-root", root, "--state-dir", state, "--max-wait", "0")
    assert (first.returncode, second.returncode) == (3, 3)
    assert (state / "client.key").read_bytes() == key
    assert file_mode(state / "client.key") == 0o600
    assert file_mode(state) == 0o700
    csrs = [json.loads(request.body)["csr_pem"] for request in endpoint.requests]
    assert len(csrs) == 2 and _public_key(csrs[0]) == _public_key(csrs[1])
    assert key.decode() not in first.stdout + first.stderr + second.stdout + second.stderr


def _public_key(csr_pem: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    csr = x509.load_pem_x509_csr(csr_pem.encode())
    return csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

"""Real things the agent tests need: the CLI as a subprocess, a throwaway CA, an HTTPS endpoint."""

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared_contract.payload import SpawnPayload, write_fw_cfg_tree

TOKEN = "pnat_test_0123456789abcdef0123456789abcdef"


def run_agent(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The agent as an operator runs it: a separate process, stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "child_agent", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_agent(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "child_agent", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert line.startswith("powernode-child-agent: error: "), line
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in line, line
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def payload(**overrides: str) -> SpawnPayload:
    values = {
        "parent_url": "https://127.0.0.1:9/",
        "acceptance_token": TOKEN,
        "spawn_mode": "managed_child",
        "parent_peer_id": "6f1c2a8e-0000-4000-8000-000000000001",
        "instance_uuid": "0d9e4f5a-0000-4000-8000-000000000002",
        "instance_name": "child-test-1",
        "platform_url": "https://child-test-1.example.test/",
        "provisioner": "qemu",
    }
    return SpawnPayload(**(values | overrides))


def fw_cfg_tree(root: Path, spawn_payload: SpawnPayload) -> Path:
    write_fw_cfg_tree(spawn_payload, root)
    return root


@dataclass
class ThrowawayCA:
    """A throwaway CA, and the server certificates it signs."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> "ThrowawayCA":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            certificate_builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def server_files(self, directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        cert = (
            certificate_builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / "server.crt", directory / "server.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


def certificate_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class TlsEndpoint:
    """A real HTTPS server in a thread that records every request and answers with one fixed reply."""

    cert_files: tuple[Path, Path]
    port: int
    status: int = 401
    reply: dict = field(
        default_factory=lambda: {"success": False, "error": "acceptance_token not recognized or expired"}
    )
    requests: list[Recorded] = field(default_factory=list)
    handshakes_failed: int = 0

    def start(self) -> "TlsEndpoint":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, self.cert_files))
        self._server = _Server(("127.0.0.1", self.port), _handler(self), endpoint=self)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, *, endpoint: TlsEndpoint) -> None:
        self.endpoint = endpoint
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """The TLS handshake happens here; count the clients that gave up on it."""
        try:
            return super().get_request()
        except OSError:
            self.endpoint.handshakes_failed += 1
            raise


def _handler(endpoint: TlsEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            endpoint.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            data = json.dumps(endpoint.reply).encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def file_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


class TcpRelay:
    """Forwards 127.0.0.1:listen_port to 127.0.0.1:target_port, one pair of threads per connection."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        return

